"""The imprint model: trained on TensorFlow in its own process, the same .keras file
embeds alike on the TensorFlow and torch backends, and matching through the warehouse's
reference table gives the right sheet or ``unknown``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twin.config import TwinConfig
from twin.recorder import simulate

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
EMBED = """
import sys
from pathlib import Path
import numpy as np
from models.identity.imprint import ImprintModel, keras_backend
model = ImprintModel.load(Path(sys.argv[1]))
np.save(sys.argv[3], model.embed(np.load(sys.argv[2])))
print(keras_backend())
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A small imprint model trained on a moderate-distortion twin recording."""
    from models.identity.imprint import fit, imprint_recipe
    from tasks.identity import load_observations

    root = tmp_path_factory.mktemp("imprint")
    simulate(TwinConfig(distortion=0.5), n_sheets=16, seed=9, out=root / "twin")
    observations = load_observations(root / "twin")
    # Every sheet is trained on and the threshold is chosen on all of them: this module
    # tests saving, loading and matching; how well unseen sheets are identified is
    # measured by `steelsight evaluate identity` on a model trained for longer.
    everything = np.arange(len(observations))
    split = {"train": everything, "validation": everything, "holdout": everything[:0]}
    recipe = imprint_recipe(
        "tiny", width=16, epochs=10, steps_per_epoch=10, batch=16, registered=16, target_far=0.01
    )
    result = fit(
        observations.crops,
        observations.sheet_ids,
        observations.sources,
        split,
        recipe,
        seed=0,
        workdir=root / "work",
    )
    return root, observations, result


def _embed_on(backend: str, folder: Path, crops: Path, out: Path) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(
        [sys.executable, "-c", EMBED, str(folder), str(crops), str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_training_history_and_threshold_are_recorded(trained) -> None:
    root, _, result = trained
    assert len(result.history) == 10
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    config = json.loads((root / "work" / "model" / "imprint.json").read_text())
    assert config["trained_backend"] == "tensorflow"
    assert 0 < config["threshold"]["threshold"] <= 1


def test_same_keras_file_embeds_alike_on_tensorflow_and_torch(trained, tmp_path: Path) -> None:
    root, observations, _ = trained
    folder = root / "work" / "model"
    np.save(tmp_path / "crops.npy", observations.crops[:32])
    seen = {
        backend: _embed_on(backend, folder, tmp_path / "crops.npy", tmp_path / f"{backend}.npy")
        for backend in ("tensorflow", "torch")
    }
    assert seen == {"tensorflow": "tensorflow", "torch": "torch"}
    tf_emb, torch_emb = np.load(tmp_path / "tensorflow.npy"), np.load(tmp_path / "torch.npy")
    assert tf_emb.shape == (32, 64)
    assert np.allclose(np.linalg.norm(torch_emb, axis=1), 1, atol=1e-5)
    assert np.abs(tf_emb - torch_emb).max() < 1e-4
    assert not np.allclose(tf_emb[0], tf_emb[1])  # and they say something


def test_unregistered_sheet_is_unknown_and_a_wiped_marking_still_matches(
    trained, home: Path
) -> None:
    from models.identity.matching import UNKNOWN
    from tasks.identify import Models, reference_index, register_station
    from tasks.identity import find_pairs
    from warehouse.store import Warehouse

    root, observations, result = trained
    model = result.model
    pair = find_pairs(root / "twin")[0]
    warehouse = Warehouse(home / "warehouse").ensure()
    models = Models(None, model, "none", "test")
    done = register_station(pair.station, models, warehouse, leave_out=0.25, ground_truth=True)
    index = reference_index(warehouse, "test")
    assert done.references == len(index) and 0 < len(index) < 16
    assert warehouse.row_counts()["sheet_references"] == len(index)
    registered = set(index.sheet_ids)

    # a sheet the station never registered comes back unknown
    inspection = observations.where("inspection")
    unknown = [i for i, s in enumerate(inspection.sheet_ids) if s not in registered]
    assert unknown
    answers = index.match(model.embed(inspection.crops[unknown]), model.threshold)
    assert answers.sheet_ids == [UNKNOWN] * len(unknown)

    # a third of the paint wiped off registered markings: still nearest to their own
    # sheet, and never given another sheet's ID
    station = observations.where("station")
    known = [i for i, s in enumerate(station.sheet_ids) if s in registered]
    rng = np.random.default_rng(0)
    wiped = station.crops[known].copy()
    for crop in wiped:
        h, w = crop.shape
        for _ in range(3):
            y, x = rng.integers(0, h // 2), rng.integers(0, w - w // 6)
            crop[y : y + h // 2, x : x + w // 6] = np.median(crop)
    matches = index.match(model.embed(wiped), model.threshold)
    truth = [station.sheet_ids[i] for i in known]
    nearest = np.mean([a == t for a, t in zip(matches.nearest, truth, strict=True)])
    wrong = [a for a, t in zip(matches.sheet_ids, truth, strict=True) if a not in (t, UNKNOWN)]
    assert nearest >= 0.8, f"only {nearest:.0%} of wiped registered markings found their sheet"
    assert wrong == [], f"wiped markings given another sheet's ID: {wrong}"
