"""Inspection throughput: end-to-end frames/s against model-only frames/s, same run.

    python bench/inspect_throughput.py --home .steelsight [--sheets 20] [--rounds 5]

Uses the champion models of the registry under ``--home`` (run ``make demo`` first).
A twin recording is simulated into a temporary folder. Per round (median reported):

* model-only: the recording's frames already decoded in memory, through the defect
  segmenter (gate, thresholds, regions with RLE), the marking detector and the imprint
  embedder, in batches: what the models cost with nothing else in the way;
* end to end, one worker: ``tasks.inspection.inspect_chunk`` over every frame range
  (decoding the video a batch ahead, sheet-edge profiles, the models, defect regions)
  and ``assemble`` (tracking, identification, placing and grading): the inspect
  flow's work on one Dask worker, without the cluster around it.

Both paths run once per engine of ``--engines`` (torch; ONNX Runtime for the models
`steelsight export` registered an ONNX graph for: ``settings.inference_engine=onnx``;
either with ``+compiled``: the segmenter's network compiled where it runs on torch,
``settings.compile_networks=on``, its compile time outside the rounds; with
``+processes``: markings identified in processes, ``settings.identify_in=processes``,
their start in the first round, otherwise on threads; with ``+unidentified``: no sheets
registered, so the markings are found and none identified, what identification costs),
in the same run, the first as the baseline. The end-to-end rows say how many markings
were kept: what the home's detector finds on the line decides much of identification's
cost.

The ratio end-to-end / model-only is what the data path costs; the target on an H200
is >= 0.8 at >= 3,200 frames/s of 1600x256.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(".steelsight"))
    parser.add_argument("--sheets", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--engines",
        default="torch,onnx",
        help="comma-separated: torch, onnx, auto, each maybe +compiled (the segmenter "
        "compiled), +processes (identification in processes) and +unidentified (no "
        "registered sheets: the markings found, none identified), e.g. onnx+processes",
    )
    args = parser.parse_args()

    os.environ["STEELSIGHT_HOME"] = str(args.home.resolve())
    from core.runtime import configure_environment
    from core.settings import get_settings

    settings = get_settings()
    configure_environment(settings, inference=True)

    import numpy as np
    import torch

    import tasks.inspection
    from flows.inspect import champion_refs
    from models.identity.crops import marking_crop
    from tasks.identify import reference_index, threshold_of
    from tasks.inspection import (
        Registry,
        assemble,
        decode_range,
        inspect_chunk,
        networks_on,
        recording,
        worker_models,
    )
    from tasks.labels import archive_id_for
    from twin.config import TwinConfig
    from twin.recorder import simulate
    from warehouse.store import Warehouse

    refs = champion_refs(settings)
    warehouse = Warehouse(settings.warehouse_dir).ensure()
    index = reference_index(warehouse, refs.imprint) if refs.identifies else None
    registry = Registry(index, threshold_of(settings)) if index is not None and len(index) else None

    with tempfile.TemporaryDirectory() as tmp:
        line = simulate(TwinConfig(), args.sheets, seed=7, out=Path(tmp))
        rec = recording(archive_id_for(line.inspection), line.inspection)
        chunks = rec.chunks(args.chunk, refs, args.batch, args.device)
        frames = np.stack([f for c in chunks for f in decode_range(c)])
        n = len(frames)

        def model_only() -> None:
            for start in range(0, n, args.batch):
                batch = frames[start : start + args.batch]
                models["segmentation"].predict(batch, batch_size=args.batch, regions=True)
                if "marking" in models:
                    imprint = models["imprint"]
                    found = models["marking"].detect(list(batch), batch=args.batch)
                    crops = [
                        marking_crop(image, row[:4], imprint.crop_size, imprint.margin)
                        for image, rows in zip(batch, found, strict=True)
                        for row in rows
                    ]
                    if crops:
                        imprint.embed(np.stack(crops))

        ran: set[str] = set()  # what the ranges ran on, identification's threads or processes
        # markings kept per pass: the boxes identification kept (weak ones only where they
        # named a sheet), each with its verdict
        verdicts: list[int] = []

        def end_to_end(identifying: bool = True) -> None:
            results = [inspect_chunk(c, registry if identifying else None) for c in chunks]
            ran.update(r.engines for r in results)
            verdicts.append(sum(len(r.verdicts) for r in results))
            assemble(rec, results, refs, settings.grades, "bench")

        rows = []
        for engine in args.engines.split(","):
            # the engine as a worker started with STEELSIGHT_INFERENCE_ENGINE (and
            # STEELSIGHT_COMPILE_NETWORKS, STEELSIGHT_IDENTIFY_IN) takes it
            inference, *flags = engine.split("+")
            unknown = set(flags) - {"compiled", "processes", "unidentified"}
            if unknown:
                parser.error(f"--engines {engine}: unknown {', '.join(sorted(unknown))}")
            os.environ["STEELSIGHT_INFERENCE_ENGINE"] = inference
            os.environ["STEELSIGHT_COMPILE_NETWORKS"] = "on" if "compiled" in flags else "off"
            os.environ["STEELSIGHT_IDENTIFY_IN"] = (
                "processes" if "processes" in flags else "threads"
            )
            get_settings.cache_clear()
            tasks.inspection._MODELS.clear()
            models = worker_models(refs, args.device, args.batch)
            engines = networks_on(models)
            model_only()  # warm-up: first calls allocate and pick kernels
            identifying = "unidentified" not in flags
            for name, run in (
                ("model-only", model_only),
                ("end-to-end", lambda identifying=identifying: end_to_end(identifying)),
            ):
                times = []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - started)
                median = statistics.median(times)
                if name == "end-to-end":
                    engines = " / ".join(sorted(ran)) + f"; {verdicts[-1]} markings kept"
                    ran.clear()
                rows.append((engine, engines, name, median, n / median))

    device = str(models["segmentation"].device)
    print(
        f"\ninspect throughput: {n} frames of {frames.shape[2]}x{frames.shape[1]} "
        f"({args.sheets} twin sheets), median of {args.rounds} rounds; models {refs.key()}; "
        f"device {device}; torch threads {torch.get_num_threads()}; batch {args.batch}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"{'engine':<14} {'path':<12} {'seconds':>9} {'frames/s':>10}  networks on")
    for engine, engines, name, seconds, rate in rows:
        print(f"{engine:<14} {name:<12} {seconds:>9.2f} {rate:>10.1f}  {engines}")
    for i in range(0, len(rows), 2):
        print(f"{rows[i][0]}: end-to-end / model-only {rows[i + 1][4] / rows[i][4]:.2f}")
    if len(rows) == 4:
        print(
            f"{rows[2][0]} / {rows[0][0]}: model-only {rows[2][4] / rows[0][4]:.2f}x, "
            f"end to end {rows[3][4] / rows[1][4]:.2f}x"
        )


if __name__ == "__main__":
    main()
