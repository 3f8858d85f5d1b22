"""Training, the holdout comparison and the champion alias, end to end on real components:
a twin recording, the retrain flow under a Prefect test server, a SQLite MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from prefect.testing.utilities import prefect_test_harness

from core.settings import get_settings
from flows.retrain import retrain
from models import registry
from tasks.datasets import load_segmentation
from tasks.training import prepare
from twin.config import TwinConfig
from twin.recorder import simulate

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow
STEELSIGHT = Path(sys.executable).parent / "steelsight"
# More defects per frame than the plant's rates, so that a model trained for a minute on a
# CPU has enough of each class to learn from.
BUSY_LINE = TwinConfig(class_rates={1: 0.5, 2: 0.3, 3: 0.8, 4: 0.5})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """One STEELSIGHT_HOME, one Prefect test server and one twin recording for the module."""
    root = tmp_path_factory.mktemp("retrain")
    recording = simulate(BUSY_LINE, n_sheets=16, seed=5, out=root / "twin")
    with pytest.MonkeyPatch.context() as mp, prefect_test_harness(server_startup_timeout=120):
        mp.setenv("STEELSIGHT_HOME", str(root / "home"))
        get_settings.cache_clear()
        yield recording.inspection, root / "home"
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def weak(world):
    """Version 1: one epoch from scratch, made champion (by hand when below the floor, as
    a person would) and exported, as a plant that runs its champions on ONNX Runtime has
    them."""
    from tasks.export import export_version, sample_frames

    archive, _ = world
    weak = retrain(
        kind="segmentation", data=str(archive), size="tiny", device="cpu", overrides={"epochs": 1}
    )
    assert weak["version"] == 1 and weak["onnx"] is None  # no champion before it
    settings = get_settings()
    if not weak["promoted"]:
        registry.promote(registry.connect(settings), "segmentation", 1, "tests: a champion")
    exported = export_version(settings, "segmentation", 1, sample_frames(archive, 8), rounds=1)
    assert exported.registered
    return weak


@pytest.fixture(scope="module")
def first(world, weak):
    """Version 2: the tiny recipe trained for 40 epochs (minutes on 2 cores), enough to
    learn; the module's champion from here on."""
    archive, _ = world
    return retrain(
        kind="segmentation",
        data=str(archive),
        size="tiny",
        device="cpu",
        overrides={"epochs": 40},
    )


def test_tiny_model_learns_and_becomes_champion(first) -> None:
    holdout = first["holdout"]
    assert first["version"] == 2 and first["promoted"] and first["champion_before"] == 1
    # Clearly above what predicting "no defect" everywhere scores on the same frames.
    assert holdout["mean_dice"] >= holdout["empty_score"] + 0.04, holdout
    found = [
        name for name, row in holdout["per_class"].items() if (row["dice_defective"] or 0) > 0.2
    ]
    assert found, holdout["per_class"]


def test_champion_reloads_with_identical_predictions(world, first, tmp_path: Path) -> None:
    archive, _ = world
    settings = get_settings()
    frames = prepare("segmentation", archive, tmp_path, "tiny").holdout.images[:4]
    segmenter = registry.load_model(settings, "segmentation", "champion")
    direct = segmenter.predict(frames).masks
    pyfunc = mlflow.pyfunc.load_model("models:/steelsight-segmentation@champion")
    assert np.array_equal(pyfunc.predict(frames), direct.astype(np.uint8))
    again = registry.load_model(settings, "segmentation", 2).predict(frames).masks
    assert np.array_equal(again, direct)
    version = registry.connect(settings).get_model_version("steelsight-segmentation", "2")
    assert float(version.tags["holdout_score"]) == pytest.approx(first["score"], abs=1e-6)
    config = pyfunc.metadata.metadata["steelsight"]
    assert config["classes"] == {
        "1": "pits",
        "2": "fine_scratches",
        "3": "scratches",
        "4": "patches",
    }
    assert len(config["thresholds"]["gate"]) == 4


# Run with `python -S`: site-packages on the path by hand, so that no .pth file runs and
# steelsight's editable install (which maps models/ and core/ to the checkout) is absent.
CLEAN_LOAD = """
import importlib.util, sys
sys.path[:] = [p for p in sys.path if p] + [sys.argv[1]]
assert importlib.util.find_spec("models") is None and importlib.util.find_spec("core") is None
import mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[2])
model = mlflow.pyfunc.load_model("models:/steelsight-segmentation@champion")
np.save(sys.argv[4], model.predict(np.load(sys.argv[3])))
print(sys.modules["models"].__file__)
"""


def test_the_champion_loads_where_steelsight_is_not_installed(world, first, tmp_path: Path) -> None:
    """A registered model carries the code it needs (MLflow code_paths: core/, models/),
    so it loads and predicts in a Python that has the libraries but not steelsight."""
    import site

    archive, _ = world
    frames = prepare("segmentation", archive, tmp_path, "tiny").holdout.images[:2]
    np.save(tmp_path / "frames.npy", frames)
    direct = registry.load_model(get_settings(), "segmentation", "champion").predict(frames)
    done = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            CLEAN_LOAD,
            site.getsitepackages()[0],
            get_settings().tracking_uri,
            str(tmp_path / "frames.npy"),
            str(tmp_path / "masks.npy"),
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded_from = Path(done.stdout.strip().splitlines()[-1])
    assert "artifacts" in loaded_from.parts and REPO not in loaded_from.parents
    assert np.array_equal(np.load(tmp_path / "masks.npy"), direct.masks.astype(np.uint8))


@pytest.fixture(scope="module")
def worse(world, first):
    archive, _ = world
    # One epoch from scratch: a deliberately worse model on the same data and holdout.
    return retrain(
        kind="segmentation", data=str(archive), size="tiny", device="cpu", overrides={"epochs": 1}
    )


def test_worse_model_does_not_take_the_alias(world, first, worse) -> None:
    assert worse["version"] == 3 and not worse["promoted"] and worse["onnx"] is None
    assert worse["score"] < first["score"]
    assert worse["champion_before"] == 2
    # the champion was re-scored on the same holdout: the score it was registered with
    assert worse["champion_score"] == pytest.approx(first["score"], abs=1e-9)
    client = registry.connect(get_settings())
    assert registry.champion_version(client, "segmentation") == 2
    tags = client.get_model_version("steelsight-segmentation", "3").tags
    assert float(tags["holdout_score"]) == pytest.approx(worse["score"], abs=1e-6)
    assert float(tags["champion_score_at_registration"]) == pytest.approx(first["score"], abs=1e-6)


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STEELSIGHT_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [str(STEELSIGHT), *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.e2e
def test_people_promote_roll_back_and_list(world, first, worse) -> None:
    archive, home = world
    client = registry.connect(get_settings())
    promoted = run(home, "promote", "3", "--reason", "night shift trial")
    assert promoted.returncode == 0, promoted.stderr
    assert registry.champion_version(client, "segmentation") == 3
    # back along the alias's history: 3, then the trained version 2, then version 1
    for current, previous in ((3, 2), (2, 1)):
        back = run(home, "rollback")
        assert back.returncode == 0, back.stderr
        assert f"version {current} -> version {previous}" in back.stdout
        assert registry.champion_version(client, "segmentation") == previous
    nothing = run(home, "rollback")
    assert nothing.returncode == 1 and "nothing to roll back" in nothing.stderr
    restored = run(home, "promote", "2", "--reason", "the trained one again")
    assert restored.returncode == 0, restored.stderr
    missing = run(home, "promote", "9")
    assert missing.returncode == 1 and "has no version 9" in missing.stderr
    listing = run(home, "models")
    assert listing.returncode == 0 and "champion" in listing.stdout
    evaluated = run(
        home, "evaluate", "segmentation", "--data", str(archive), "--split", "holdout", "--json"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    import json

    report = json.loads(evaluated.stdout)
    assert report["mean_dice"] == pytest.approx(first["score"], abs=1e-9)
    assert set(report["per_class"]) == {"pits", "fine_scratches", "scratches", "patches"}


def test_twin_archive_loads_with_its_masks(world) -> None:
    archive, _ = world
    data = load_segmentation(archive)
    assert data.images.shape[1:] == (256, 1600)
    assert data.presence().any(axis=0).all()  # the busy line shows every class
    # its frames tile the line, none dropped: each but the first follows the one before
    assert data.follows == [False] + [True] * (len(data) - 1)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM to the command", "Ctrl-C: SIGINT to its process group"],
)
def test_a_stopped_train_ends_within_seconds_and_registers_nothing(
    world, first, worse, signum: int, to_group: bool
) -> None:
    """Stopped in its first epoch, `train` exits within 10 s (it ran on for minutes and
    printed hundreds of lines of tracebacks once Ctrl-C had also stopped its Prefect
    server), leaves no process, no temporary folder and no new version."""
    archive, home = world
    client = registry.connect(get_settings())
    before = [v["version"] for v in registry.versions(client, "segmentation")]
    env = {**os.environ, "STEELSIGHT_HOME": str(home), "COLUMNS": "200"}
    command = [str(STEELSIGHT), "train", "segmentation", "--data", str(archive), "--size", "tiny"]
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            stderr.seek(0)
            if "epoch 1/" in stderr.read():
                break
            time.sleep(0.5)
        assert process.poll() is None, "train ended before its first epoch"
        sent = time.monotonic()
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        code = process.wait(timeout=60)
        took = time.monotonic() - sent
        stderr.seek(0)
        said = stderr.read()
    assert code == 128 + signum and took < 10, (code, took, said[-2000:])
    assert said.strip().splitlines()[-1] == (
        f"steelsight train segmentation: interrupted by {signal.Signals(signum).name}, "
        "stopped; no model version was registered"
    )
    assert "Traceback" not in said
    left = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True)
    assert not left.stdout.split(), "processes of the stopped command are still running"
    assert not list(home.glob("plots-*"))
    assert [v["version"] for v in registry.versions(client, "segmentation")] == before


@pytest.mark.e2e
def test_a_copied_home_loads_its_models_from_the_copy(world, first, tmp_path: Path) -> None:
    """MLflow stores artifact locations absolute: in a copied home they are moved to the
    copy's folder on first use, so the copy's models load from the copy."""
    import shutil
    import sqlite3

    archive, home = world
    copied = tmp_path / "copy"
    shutil.copytree(home, copied, ignore=shutil.ignore_patterns("prefect"))
    evaluated = run(
        copied, "evaluate", "segmentation", "--model", "1", "--data", str(archive), "--json"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    with sqlite3.connect(copied / "mlflow" / "mlflow.db") as con:
        locations = [
            value
            for table, column in registry._ARTIFACT_COLUMNS
            for (value,) in con.execute(f"SELECT {column} FROM {table}")
            if value and "artifacts" in value
        ]
    assert locations and all(str(copied) in v and str(home) not in v for v in locations)


def test_a_retrain_exports_its_new_champion_when_the_one_before_was_exported(first, worse) -> None:
    """A plant that runs its champions on ONNX Runtime keeps doing so after a retrain: the
    trained version 2, promoted over the exported version 1, was exported too. A version
    that follows no champion, or one that was never exported (version 3), follows none."""
    from tasks.export import export_as_before

    assert first["onnx"]["registered"] and first["onnx"]["version"] == first["version"] == 2
    settings = get_settings()
    _, check = registry.onnx_check(registry.connect(settings), "segmentation", 2)
    assert check["version"] == 2 and check["agrees"]
    assert export_as_before(settings, "segmentation", 2, None) is None
    assert export_as_before(settings, "segmentation", 2, worse["version"]) is None
