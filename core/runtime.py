"""Process-wide defaults for the libraries steelsight drives, set before they are imported.

Everything the product writes goes under STEELSIGHT_HOME, Prefect's database too, and
nothing phones home. Values the user has set in the environment win.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported: identifying processes on the GPU check's machine, which
    # has no pydantic-settings, call ``blas_on_one_thread``
    from core.settings import Settings

# For processes that run the models beside other work (inspection workers, the API, the
# benches): torch's OpenMP threads (libgomp) sleep when a parallel region ends instead
# of spinning for the next. Spinning, they took 2.3 of 14.3 core-seconds from
# identification in a bench pass of 238 frames on 2 cores, with the segmenter on torch
# (docs/benchmarks.md, "The segmenter in bfloat16, and torch's threads asleep"). libgomp
# reads it when torch loads, so it is set before; training keeps OpenMP's default.
INFERENCE_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_environment(settings: Settings, inference: bool = False) -> None:
    """``inference``: the process runs the models beside other work
    (``INFERENCE_ENVIRONMENT``; before torch is imported)."""
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(home / "ultralytics"),
        "ORT_DISABLE_TELEMETRY": "1",
        # Keras runs on torch in steelsight's processes (TensorFlow must not share a
        # process with torch); imprint training starts its own TensorFlow process.
        "KERAS_BACKEND": "torch",
    }
    if inference:
        defaults.update(INFERENCE_ENVIRONMENT)
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    blas_on_one_thread()


def blas_on_one_thread() -> None:
    """numpy's BLAS (OpenBLAS) on one thread, unless OPENBLAS_NUM_THREADS says otherwise.

    steelsight's numpy products are small and many (identification's search, one per
    marking) and run beside the models' own threads. OpenBLAS wakes its other threads for
    each and leaves them spinning: in one process of 2 cores identifying a 238-frame
    recording's markings, that took 6 of its 24 core-seconds (docs/benchmarks.md, "BLAS
    on one thread"). Dask's nanny starts inspection workers so already; the API, the
    commands (evaluate identity, register-sheets) and the benches were not. The libraries
    are loaded by then, so the limit is set through them (threadpoolctl), not through
    the environment."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return
    import numpy  # noqa: F401  (its OpenBLAS is what is limited)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
