"""The imprint embedding at inference: a Keras 3 network in a ``.keras`` file, run on
whichever backend the process has (torch on inspection workers, TensorFlow where it was
trained), with the preprocessing and the matching threshold stored beside it.

Only built-in Keras layers are used, so the file loads on any backend with no custom
objects. Training is in ``models.identity.imprint_train`` (TensorFlow, own process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from models.identity.crops import CROP_SIZE, MARGIN, standardise

FORMAT = "steelsight-imprint/1"
KERAS_FILE = "imprint.keras"
CONFIG_FILE = "imprint.json"


def keras_backend() -> str:
    """The backend this process's Keras runs on (set by KERAS_BACKEND before import)."""
    import keras

    return keras.backend.backend()


def build_network(
    input_size: tuple[int, int] = CROP_SIZE, width: int = 24, dim: int = 128, dropout: float = 0.2
):
    """A small residual CNN → flattened map (keeps where each glyph is) → embedding."""
    import keras
    from keras import layers

    def conv(x, filters, stride=1, kernel=3, relu=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    def block(x, filters):
        shortcut = conv(x, filters, stride=2, kernel=1, relu=False)
        y = conv(x, filters, stride=2)
        y = conv(y, filters, relu=False)
        return layers.ReLU()(layers.Add()([y, shortcut]))

    inputs = keras.Input(shape=(*input_size, 1), name="crop")
    x = conv(inputs, width)
    for k in (1, 2, 4, 8):
        x = block(x, width * k)
    x = conv(x, 32, kernel=1)  # (H/16, W/16, 32)
    x = layers.Flatten()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(dim, use_bias=False)(x)
    # centred before normalising, so that embeddings spread over the sphere instead of
    # sharing one common direction (impostors near 0, not near 1)
    x = layers.BatchNormalization()(x)
    outputs = layers.UnitNormalization(name="embedding")(x)
    return keras.Model(inputs, outputs, name="imprint")


class ImprintModel:
    """Marking crops (uint8, CROP_SIZE) → L2-normalised embeddings, and the threshold."""

    def __init__(self, network, config: dict, folder: Path | None = None) -> None:
        self.network = network
        self.config_ = config
        self.folder = folder
        self.onnx = None  # the network as an ONNX graph (``run_onnx``)

    @property
    def engine(self) -> str:
        return "torch" if self.onnx is None else "onnx"

    @property
    def threshold(self) -> float:
        return float(self.config_["threshold"]["threshold"])

    @property
    def crop_size(self) -> tuple[int, int]:
        return tuple(self.config_["crop_size"])  # type: ignore[return-value]

    @property
    def margin(self) -> float:
        return float(self.config_["margin"])

    def embed(self, crops: np.ndarray, batch: int = 256) -> np.ndarray:
        crops = np.asarray(crops, dtype=np.uint8)
        if crops.ndim != 3 or crops.shape[1:] != self.crop_size:
            raise ValueError(
                f"imprint crops must be (N, {self.crop_size[0]}, {self.crop_size[1]}) uint8, "
                f"got {crops.shape}: cut them with models.identity.crops.marking_crop"
            )
        from keras import ops

        dim = int(self.config_["dim"])
        out = np.zeros((len(crops), dim), np.float32)
        for start in range(0, len(crops), batch):
            x = standardise(crops[start : start + batch])
            if self.onnx is not None:
                out[start : start + batch] = self.onnx(x)[0]
            else:
                out[start : start + batch] = ops.convert_to_numpy(self.network(x, training=False))
        return out

    def export_onnx(self, path: Path) -> Path:
        """The network as an ONNX graph at ``path`` (Keras' own export): standardised
        crops (N, H, W, 1) float32 → embeddings (N, dim)."""
        # Keras exports a model only once it has been called
        self.network(np.zeros((1, *self.crop_size, 1), np.float32), training=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.network.export(str(path), format="onnx", verbose=False)
        return path

    def run_onnx(self, path: Path) -> ImprintModel:
        """From now on the network runs as the ONNX graph at ``path`` on ONNX Runtime."""
        from models.onnx import OnnxNetwork

        self.onnx = OnnxNetwork(path)
        return self

    def config(self) -> dict:
        return dict(self.config_)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if self.folder is not None and (self.folder / KERAS_FILE).exists():
            shutil.copyfile(self.folder / KERAS_FILE, folder / KERAS_FILE)
        else:
            self.network.save(folder / KERAS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(self.config_, indent=2) + "\n")
        return folder

    @staticmethod
    def load(folder: Path) -> ImprintModel:
        import keras

        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{folder}: format {config.get('format')!r}, expected {FORMAT!r}")
        network = keras.saving.load_model(folder / KERAS_FILE, compile=False)
        return ImprintModel(network, config, folder)


def default_config(dim: int, crop_size=CROP_SIZE, margin=MARGIN) -> dict:
    return {
        "format": FORMAT,
        "dim": dim,
        "crop_size": list(crop_size),
        "margin": margin,
        "trained_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
    }


@dataclass(frozen=True)
class ImprintRecipe:
    width: int  # channels of the first layer; doubled at each of four stages
    dim: int  # embedding size
    epochs: int
    steps_per_epoch: int
    batch: int  # sheets per step: each gives a station crop and an inspection crop
    learning_rate: float
    logit_scale: float  # 1 / temperature of the contrastive loss
    margin: float  # subtracted from a sheet's own similarity in the loss (CosFace-style)
    hard_share: float  # share of steps whose sheets are neighbours (same heat, near IDs)
    target_far: float  # wrong confident IDs per query the threshold is chosen for
    registered: int  # registry size the threshold is chosen for

    def to_params(self) -> dict:
        return asdict(self)


IMPRINT_SIZES = {
    "tiny": ImprintRecipe(8, 64, 3, 8, 16, 2e-3, 16.0, 0.2, 0.5, 0.001, 1000),
    # `make demo`: a couple of minutes on 2 CPU cores; threshold for a small registry
    "demo": ImprintRecipe(12, 64, 8, 12, 32, 2e-3, 16.0, 0.2, 0.5, 0.01, 100),
    "default": ImprintRecipe(24, 128, 30, 25, 64, 2e-3, 16.0, 0.2, 0.5, 0.001, 1000),
    "gpu": ImprintRecipe(48, 256, 120, 50, 256, 1e-3, 16.0, 0.2, 0.5, 0.001, 100000),
}


def imprint_recipe(size: str, **overrides) -> ImprintRecipe:
    if size not in IMPRINT_SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(IMPRINT_SIZES)}")
    return replace(IMPRINT_SIZES[size], **overrides)


# The environment of the TensorFlow process that trains the imprint (``fit``).
#
# TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow on its own (Eigen) CPU kernels. TensorFlow 2.21
# ships oneDNN 3.7, whose JIT kernel for the weight gradient of a 1x1 stride-2 convolution
# on channels-last input with fewer input channels than its register block (16 on AVX-512,
# 8 on AVX2) writes past its workspace (oneDNN issue 6035, open). The imprint network's
# first shortcut is exactly that convolution with ``width`` channels: at the `demo` width
# (12) training died of SIGSEGV or a glibc heap abort on AVX-512 machines (the upstream
# report also sees wrong gradients where it does not crash). Without oneDNN, training is
# about 20 % slower and correct on every x86-64 CPU (tests/models/test_imprint_cpu.py
# checks the gradient for 1 to 32 channels).
TRAINING_ENVIRONMENT = {
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "0",
}


@dataclass
class ImprintTraining:
    model: ImprintModel
    recipe: ImprintRecipe
    history: list[dict]
    seconds: float
    device: str


def fit(
    crops: np.ndarray,
    sheet_ids: list[str],
    sources: list[str],
    split: dict[str, np.ndarray],
    recipe: ImprintRecipe,
    seed: int,
    workdir: Path,
    log=print,
    progress: Callable[[int, int, dict], None] | None = None,
) -> ImprintTraining:
    """Train in a TensorFlow process (``models.identity.imprint_train``) and load the result
    here, on this process's backend."""
    workdir.mkdir(parents=True, exist_ok=True)
    data, out = workdir / "observations.npz", workdir / "model"
    np.savez(
        data,
        crops=crops,
        sheet_ids=np.asarray(sheet_ids),
        sources=np.asarray(sources),
        train=split["train"],
        validation=split["validation"],
    )
    env = {**os.environ, **TRAINING_ENVIRONMENT}
    command = [
        sys.executable,
        "-m",
        "models.identity.imprint_train",
        f"--data={data}",
        f"--out={out}",
        f"--recipe={json.dumps(recipe.to_params())}",
        f"--seed={seed}",
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    tail: list[str] = []
    for line in process.stdout:  # type: ignore[union-attr]
        line = line.rstrip()
        tail = ([*tail, line])[-20:]
        if line.startswith("{"):
            log(f"imprint epoch: {line}")
            if progress is not None:
                row = json.loads(line)
                progress(int(row["epoch"]), recipe.epochs, row)
    if process.wait() != 0:
        raise RuntimeError(
            f"imprint training failed (exit {process.returncode}):\n" + "\n".join(tail)
        )
    result = json.loads((out / "history.json").read_text())
    return ImprintTraining(
        ImprintModel.load(out), recipe, result["history"], result["seconds"], "cpu"
    )
