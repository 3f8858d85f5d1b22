"""Imprint training on any x86-64 CPU: the recipes train in the process ``fit`` starts,
and that process computes the gradient of the convolution oneDNN 3.7 gets wrong.

On AVX-512 machines the `demo` recipe died in training (SIGSEGV or a glibc heap abort):
TensorFlow's oneDNN kernel for the weight gradient of a 1x1 stride-2 convolution with
fewer than 16 input channels writes past its buffer. See ``TRAINING_ENVIRONMENT``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twin.config import TwinConfig
from twin.recorder import simulate

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# Every channel count up to two AVX-512 register blocks, on the imprint's input size:
# TensorFlow's weight gradient of a 1x1 stride-2 convolution against numpy's.
GRADIENT = """
import numpy as np
import tensorflow as tf
rng = np.random.default_rng(0)
worst = 0.0
for channels in range(1, 33):
    x = rng.standard_normal((16, 48, 192, channels)).astype(np.float32)
    k = tf.Variable(rng.standard_normal((1, 1, channels, channels)).astype(np.float32))
    with tf.GradientTape() as tape:
        y = tf.nn.conv2d(x, k, strides=2, padding="SAME")
        loss = tf.reduce_sum(y * y)
    got = tape.gradient(loss, k).numpy()[0, 0]
    xs = x[:, ::2, ::2, :]
    expected = np.einsum("nhwc,nhwd->cd", xs, 2 * (xs @ k.numpy()[0, 0]))
    worst = max(worst, float(np.abs(got - expected).max() / np.abs(expected).max()))
print(worst)
"""


def test_the_training_process_gets_the_strided_1x1_gradient_right() -> None:
    from models.identity.imprint import TRAINING_ENVIRONMENT

    done = subprocess.run(
        [sys.executable, "-c", GRADIENT],
        env={**os.environ, **TRAINING_ENVIRONMENT},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert float(done.stdout.split()[-1]) < 1e-4


@pytest.fixture(scope="module")
def observations(tmp_path_factory: pytest.TempPathFactory):
    from tasks.identity import load_observations

    root = tmp_path_factory.mktemp("imprint-cpu")
    simulate(TwinConfig(), n_sheets=24, seed=5, out=root / "twin")
    observations = load_observations(root / "twin")
    return root, observations, observations.splits()


def _fit(observations, recipe, workdir: Path):
    from models.identity.imprint import fit

    _, o, split = observations
    return fit(o.crops, o.sheet_ids, o.sources, split, recipe, seed=0, workdir=workdir)


@pytest.mark.parametrize("size", ["gpu"])
def test_every_other_recipe_takes_its_first_steps(observations, size: str) -> None:
    """The widest network and largest batch (`gpu`), two steps. The `demo` recipe trains
    in full in the main job's fixture (tests/inspect/test_main_job.py:
    test_the_demo_imprint_recipe_trained_as_make_demo_trains_it), `tiny` in
    tests/models/test_imprint.py's; `default` lies between them (width 24, batch 64), and
    the oneDNN fault concerned fewer than 16 channels (the gradient test above covers 1
    to 32)."""
    from models.identity.imprint import imprint_recipe

    recipe = imprint_recipe(size, epochs=1, steps_per_epoch=2)
    result = _fit(observations, recipe, observations[0] / size)
    assert math.isfinite(result.history[0]["train_loss"])
