"""The marking detector: Ultralytics YOLO trained from a model yaml on the line's own
pictures (no pretrained download), run batched on grey frames.

Import ``models.identity.offline`` is done here before ultralytics, so every path that
reaches YOLO goes through the offline configuration.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from models.devices import resolve_device
from models.identity import offline
from models.identity.crops import picture_size
from models.onnx import quiet

FORMAT = "steelsight-marking-detector/1"
ARCHITECTURE = Path(__file__).with_name("marking-yolov8.yaml")


@dataclass(frozen=True)
class DetectorRecipe:
    scale: str  # of models/identity/marking-yolov8.yaml: t, n or s; weights start random
    imgsz: int
    epochs: int
    batch: int
    max_images: int  # training pictures at most (positives first, then empty frames)
    conf: float = 0.25  # detections below this score are dropped at prediction
    # > 0: the epochs are chosen so that training takes about this many optimizer steps,
    # whatever the data's size: a small dataset gets more passes, a large one the same
    # time (``epochs`` is then unused)
    steps: int = 0
    # train on pictures of one camera stacked top to bottom into about squares, at the
    # scale the detector sees them (tasks.identity.write_yolo_dataset, ``stacked_at``)
    stacked: bool = False
    # > 0: AdamW at this learning rate; 0: Ultralytics' own choice, which for a run this
    # short is AdamW at 0.002 for one class
    lr0: float = 0.0

    def to_params(self) -> dict:
        return asdict(self)

    def epochs_for(self, train_pictures: int) -> int:
        """The epochs to train on ``train_pictures`` pictures."""
        if self.steps <= 0:
            return self.epochs
        per_epoch = max(1, -(-train_pictures // self.batch))
        return max(1, round(self.steps / per_epoch))


SIZES = {
    # smoke runs: trains, saves and predicts in well under a minute
    "tiny": DetectorRecipe("t", imgsz=256, epochs=1, batch=16, max_images=32),
    # `make demo`: a few minutes. From random weights YOLO finds nothing for a few hundred
    # steps, then learns the markings at once; 250 steps at Ultralytics' own learning
    # rate (AdamW, 0.002) were just past that point (the demo named 9 to 12 of its 12
    # sheets from run to run), 600 named 12. At 0.01, 400 steps score as 600 did on two
    # other recordings (two seeds), 300 lower: docs/benchmarks.md, "The demo detector's
    # learning rate". 400 steps take about 190 s on 2 cores
    "demo": DetectorRecipe(
        "t", imgsz=256, epochs=50, batch=16, max_images=200, steps=400, lr0=0.01
    ),
    # CPU, 2 cores: about 20 minutes, whatever the data's size (1,400 steps of 16). It
    # finds faint markings at low scores, and so some scale patches: the detections from
    # WEAK_CONF up are verified, and only those at ``conf`` or above are kept unverified
    # (docs/benchmarks.md, "The default detector's recipe"). Its training pictures are
    # stacks of six line frames or two station pictures, which fill the square input a
    # single frame fills a sixth of (docs/benchmarks.md, "Stacked training pictures")
    "default": DetectorRecipe(
        "t", imgsz=416, epochs=25, batch=16, max_images=600, steps=1400, conf=0.6, stacked=True
    ),
    # one GPU
    "gpu": DetectorRecipe("s", imgsz=640, epochs=100, batch=64, max_images=20000),
}


def recipe_for(size: str, **overrides) -> DetectorRecipe:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    return replace(SIZES[size], **overrides)


def _config_dir() -> Path:
    from core.settings import get_settings

    return get_settings().home.resolve() / "ultralytics"


def _ultralytics_device(device: str) -> str:
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return str(resolved.index or 0)
    return "cpu"


@contextmanager
def _threads_kept() -> Iterator[None]:
    """Torch's thread count as it was before: ultralytics sets it to cores - 1 for CPU
    work and leaves it so (on 2 cores every later torch call in the process ran on one
    thread)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# What the ``random`` module offers that a training run may draw from
RANDOM_DRAWS = (
    "seed", "getstate", "setstate", "random", "uniform", "randint", "randrange",
    "choice", "choices", "shuffle", "sample", "getrandbits", "randbytes", "gauss",
    "normalvariate", "triangular", "betavariate", "expovariate", "gammavariate",
    "lognormvariate", "vonmisesvariate", "paretovariate", "weibullvariate",
)  # fmt: skip


@contextmanager
def _random_of_this_thread() -> Iterator[None]:
    """While it lasts, the calling thread draws from its own generator through the
    ``random`` module (Ultralytics seeds it and draws its augmentations there), and
    every other thread from the module's own, as before. The module's generator is
    shared by the whole process: in `steelsight train` and `make demo`, Prefect's event
    client draws from it on its own thread, at moments that depend on timing, and the
    same demo detector trained on the same pictures with the same seed came out with
    holdout mAP50 0.84 to 1.00 (docs/stack.md)."""
    own, trainer = random.Random(), threading.get_ident()
    shared = {name: getattr(random, name) for name in RANDOM_DRAWS}

    def routed(name: str):
        mine, theirs = getattr(own, name), shared[name]
        return lambda *a, **k: (mine if threading.get_ident() == trainer else theirs)(*a, **k)

    for name in RANDOM_DRAWS:
        setattr(random, name, routed(name))
    try:
        yield
    finally:
        for name, draw in shared.items():
            setattr(random, name, draw)


# A box this many times wider or taller than the largest marking that pictures of its
# size showed in training (``largest``) is no marking: on the line, those are scale
# patches, boxed across most of the frame. On seed 17 (1,000 sheets, strong distortion,
# the default detector), of the sure boxes (0.6 and over) that lay on no marking, 57 of
# 108 were larger than this; of every weak box (0.05 and over) on none, 4,181 of 5,060;
# of the boxes on a marking (IoU 0.5), none at any score. The detector's boxes of
# markings reached 1.2 times the largest label (seed 11), and 1.35 at seed 17. One sure
# box this large held a marking with the scale patch beside it (IoU 0.42), the only box
# of that sheet: a sure box this large is kept as an unsure one, which identifies a
# sheet only when verified (docs/benchmarks.md, "Boxes no marking is the size of")
SIZE_MARGIN = 1.5


def marking_sized(
    rows: np.ndarray, size: str, largest: Mapping[str, Sequence[float]] | None, sure: float
) -> np.ndarray:
    """``rows`` (x_min, y_min, x_max, y_max, score) with each box wider or taller than
    ``SIZE_MARGIN`` times the largest marking (width, height) of pictures of ``size``
    dropped, or when scored ``sure`` or more, scored just under ``sure``; all of them as
    they are when training showed no marking at that size."""
    if not largest or size not in largest or not len(rows):
        return rows
    width, height = largest[size]
    oversized = (rows[:, 2] - rows[:, 0] > SIZE_MARGIN * width) | (
        rows[:, 3] - rows[:, 1] > SIZE_MARGIN * height
    )
    demoted = oversized & (rows[:, 4] >= sure)
    rows = rows.copy()
    rows[demoted, 4] = np.nextafter(np.float32(sure), np.float32(0))
    return rows[~oversized | demoted]


def _bgr(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


class MarkingDetector:
    """YOLO weights plus the settings they were trained with. ``largest``: per picture
    size ("HEIGHTxWIDTH"), the largest marking (width, height in pixels) its training
    pictures of that size showed; boxes far larger are dropped or scored as unsure
    (``marking_sized``). None, for a detector saved before sizes were kept: no box is."""

    def __init__(
        self,
        weights: Path,
        imgsz: int,
        conf: float,
        device: str = "auto",
        largest: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        ultralytics = offline.prepare(_config_dir())
        self.weights = Path(weights)
        self.imgsz = imgsz
        self.conf = conf
        self.largest = {k: [float(v) for v in wh] for k, wh in (largest or {}).items()} or None
        self.device = _ultralytics_device(device)
        self.yolo = ultralytics.YOLO(str(self.weights), task="detect")
        self.onnx: Path | None = None  # the network as an ONNX graph (``run_onnx``)

    @property
    def engine(self) -> str:
        return "torch" if self.onnx is None else "onnx"

    def export_onnx(self, path: Path) -> Path:
        """The network as an ONNX graph at ``path`` (Ultralytics' export, batch and
        picture size free, so that predictions letterbox as the torch weights do)."""
        ultralytics = offline.prepare(_config_dir())
        with tempfile.TemporaryDirectory() as tmp, _threads_kept(), quiet("ultralytics"):
            weights = Path(tmp) / "weights.pt"  # the export writes beside its weights
            shutil.copyfile(self.weights, weights)
            exported = ultralytics.YOLO(str(weights), task="detect").export(
                format="onnx", imgsz=self.imgsz, dynamic=True, simplify=False, device="cpu"
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(exported, path)
        return path

    def run_onnx(self, path: Path) -> MarkingDetector:
        """From now on the network runs as the ONNX graph at ``path`` on ONNX Runtime
        (CPU); letterboxing and non-maximum suppression stay Ultralytics'."""
        if self.device != "cpu":
            raise ValueError(f"ONNX Runtime runs here on the CPU, not on GPU {self.device}")
        ultralytics = offline.prepare(_config_dir())
        with quiet("ultralytics"):
            self.yolo = ultralytics.YOLO(str(path), task="detect")
        self.onnx = Path(path)
        return self

    def detect(
        self, images: list[np.ndarray], batch: int = 32, conf: float | None = None
    ) -> list[np.ndarray]:
        """Per image, its markings as rows (x_min, y_min, x_max, y_max, score), best first;
        ``conf``: the lowest score kept (default: the one trained with). A box far larger
        than any marking of the image's size in training is dropped, or when the
        detector was sure of it, scored as unsure (``marking_sized``)."""
        found: list[np.ndarray] = []
        # quiet: Ultralytics loads an ONNX graph at its first prediction and says so on
        # stdout, which broke `evaluate identity --json`'s one JSON object
        with _threads_kept(), quiet("ultralytics"):
            for start in range(0, len(images), batch):
                chunk = [_bgr(im) for im in images[start : start + batch]]
                results = self.yolo.predict(
                    chunk,
                    imgsz=self.imgsz,
                    conf=self.conf if conf is None else conf,
                    device=self.device,
                    verbose=False,
                )
                for image, result in zip(chunk, results, strict=True):
                    boxes = result.boxes
                    rows = np.concatenate(
                        [boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy()[:, None]], axis=1
                    ).astype(np.float32)
                    rows = marking_sized(
                        rows.reshape(-1, 5), picture_size(image), self.largest, self.conf
                    )
                    rows = rows[rows[:, 4] >= (self.conf if conf is None else conf)]
                    found.append(rows[np.argsort(-rows[:, 4], kind="stable")])
        return found

    def config(self) -> dict:
        config = {"format": FORMAT, "imgsz": self.imgsz, "conf": self.conf, "classes": ["marking"]}
        return config | ({"largest_markings": self.largest} if self.largest else {})

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.weights, folder / "weights.pt")
        (folder / "detector.json").write_text(json.dumps(self.config(), indent=2) + "\n")
        return folder

    @staticmethod
    def load(folder: Path, device: str = "auto") -> MarkingDetector:
        config = json.loads((folder / "detector.json").read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{folder}: format {config.get('format')!r}, expected {FORMAT!r}")
        return MarkingDetector(
            folder / "weights.pt",
            config["imgsz"],
            config["conf"],
            device,
            config.get("largest_markings"),
        )


@dataclass
class DetectorTraining:
    detector: MarkingDetector
    recipe: DetectorRecipe
    history: list[dict]
    seconds: float
    device: str


# Ultralytics keeps the weights of the epoch with the best validation fitness (best.pt).
# On a validation split of a few markings that choice is noise: on the demo's 40-sheet
# line (2 markings to validate on) it kept an epoch just after the detector began to
# learn (32 and 39 of 50; 39 of 80), and the demo named 8 to 10 of its 12 sheets. Below
# this many markings the last weights are kept (learning rate decayed, mosaic closed):
# docs/benchmarks.md, "Which weights the demo's detector keeps".
MIN_VALIDATION_MARKINGS = 20


def validation_markings(dataset_yaml: Path) -> int:
    """The boxes of the validation split of a dataset written by
    ``tasks.identity.write_yolo_dataset`` (labels/validation beside its data.yaml)."""
    labels = dataset_yaml.parent / "labels" / "validation"
    return sum(len(f.read_text().splitlines()) for f in labels.glob("*.txt"))


def _history(results_csv: Path, validated_each_epoch: bool) -> list[dict]:
    """The epochs' losses and validation scores; an epoch that was not validated (all but
    the last when ``validated_each_epoch`` is false) has no validation score, where
    Ultralytics writes zeros."""
    if not results_csv.exists():
        return []
    with results_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = {
        "train/box_loss": "train_box_loss",
        "train/cls_loss": "train_cls_loss",
        "metrics/mAP50(B)": "val_map50",
        "metrics/mAP50-95(B)": "val_map50_95",
    }
    history = []
    for i, r in enumerate(rows):
        validated = validated_each_epoch or i == len(rows) - 1
        names = {old: new for old, new in keep.items() if validated or not new.startswith("val_")}
        history.append(
            {
                "epoch": int(float(r["epoch"])),
                **{new: float(r[old]) for old, new in names.items() if old in r},
            }
        )
    return history


def fit(
    dataset_yaml: Path,
    recipe: DetectorRecipe,
    device: str,
    seed: int,
    workdir: Path,
    progress: Callable[[int, int, dict], None] | None = None,
    largest: Mapping[str, Sequence[float]] | None = None,
) -> DetectorTraining:
    """Train YOLO on a dataset written by ``tasks.identity.write_yolo_dataset``;
    ``progress(epoch, epochs, row)`` after each epoch's validation; ``largest``: that
    dataset's largest markings per picture size, kept with the detector."""
    ultralytics = offline.prepare(_config_dir())
    # a validation split too small to choose weights by is not run after every epoch,
    # nor are the weights saved after every epoch: only after the last, whose weights are
    # kept (about 1 s an epoch on 2 cores, 86 epochs in the demo)
    choose_best = validation_markings(dataset_yaml) >= MIN_VALIDATION_MARKINGS
    workdir.mkdir(parents=True, exist_ok=True)
    architecture = workdir / f"marking-yolov8{recipe.scale}.yaml"
    shutil.copyfile(ARCHITECTURE, architecture)
    yolo = ultralytics.YOLO(str(architecture), task="detect")
    if progress is not None:

        def epoch_end(trainer) -> None:
            if trainer.epoch >= trainer.epochs:  # the final validation of the best weights
                return
            # the epoch's mean loss per part (box, cls, dfl): a dict of tensors here
            losses = trainer.tloss.values() if isinstance(trainer.tloss, dict) else ()
            row = {
                "epoch": trainer.epoch + 1,
                "train_loss": float(sum(float(v) for v in losses)) if losses else None,
                "val_map50": (trainer.metrics or {}).get("metrics/mAP50(B)")
                if choose_best or trainer.epoch + 1 >= trainer.epochs
                else None,
            }
            progress(trainer.epoch + 1, trainer.epochs, row)

        yolo.add_callback("on_fit_epoch_end", epoch_end)
    # Ultralytics sets torch to cores - 1 threads for CPU training (one thread on two
    # cores); the run is given back the threads the process had
    threads = torch.get_num_threads()
    yolo.add_callback("on_train_start", lambda trainer: torch.set_num_threads(threads))
    started = time.perf_counter()
    with _threads_kept(), _random_of_this_thread():
        _train(yolo, dataset_yaml, recipe, device, seed, workdir, choose_best)
    seconds = time.perf_counter() - started
    run = workdir / "train"
    weights = run / "weights" / "best.pt"
    if not weights.exists() or not choose_best:
        weights = run / "weights" / "last.pt"
    detector = MarkingDetector(weights, recipe.imgsz, recipe.conf, device, largest)
    history = _history(run / "results.csv", validated_each_epoch=choose_best)
    return DetectorTraining(detector, recipe, history, seconds, _ultralytics_device(device))


def _train(
    yolo,
    dataset_yaml: Path,
    recipe: DetectorRecipe,
    device: str,
    seed: int,
    workdir: Path,
    choose_best: bool,
) -> None:
    """Ultralytics' training run, with the settings every recipe shares; unless
    ``choose_best``, validated and saved after the last epoch only."""
    epochs = recipe.epochs_for(len(list((dataset_yaml.parent / "images" / "train").iterdir())))
    yolo.train(
        data=str(dataset_yaml),
        epochs=epochs,
        imgsz=recipe.imgsz,
        batch=recipe.batch,
        device=_ultralytics_device(device),
        workers=0,
        seed=seed,
        deterministic=True,
        pretrained=False,
        amp=False,  # the AMP check downloads a checkpoint; bf16 is not needed for a small net
        plots=False,
        val=choose_best,
        save=choose_best,
        project=str(workdir),
        name="train",
        exist_ok=True,
        verbose=False,
        **({"optimizer": "AdamW", "lr0": recipe.lr0} if recipe.lr0 > 0 else {}),
        fliplr=0.0,  # a mirrored marking is not a marking
        mosaic=1.0,
        close_mosaic=max(1, epochs // 5),
    )
