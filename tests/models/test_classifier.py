"""The NEU classifier: data loading, training on real NEU images, registry and evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.classifier.classifier import Classifier
from models.classifier.network import ClassifierSpec, ResNetClassifier
from models.classifier.train import class_weights, fit, recipe_for
from models.preprocess import Preprocess
from tasks.datasets import load_classification
from tests.helpers import copy_neu_subset


def test_neu_images_take_their_class_and_the_split_is_stratified(shared_data: Path) -> None:
    data = load_classification(shared_data / "neu-det")
    assert len(data) == 1500 and data.images.shape[1:] == (200, 200)
    assert np.bincount(data.labels).tolist() == [250] * 6
    split = data.splits()
    held = np.bincount(data.labels[split["holdout"]], minlength=6)
    assert held.tolist() == [50] * 6  # 20 % of each class, the same every run
    assert not set(split["holdout"]) & set(split["train"])


def test_class_folders_are_a_dataset_too(tmp_path: Path, shared_data: Path) -> None:
    for name in ("crazing", "scratches"):
        (tmp_path / name).mkdir()
        for n in (1, 2, 3):
            source = shared_data / "neu-det" / "images" / f"{name}_{n}.jpg"
            (tmp_path / name / source.name).write_bytes(source.read_bytes())
    data = load_classification(tmp_path)
    assert data.class_names == ["crazing", "scratches"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_class_weights_favour_the_rare_class() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights[1] > weights[0] and weights[2] == pytest.approx(weights.max() / 3 * 3 / 2, rel=1)


def test_saved_classifier_predicts_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ClassifierSpec("resnet10", 3)
    classifier = Classifier(
        ResNetClassifier(spec), spec, Preprocess(64, 64, 0.5, 0.2), ["a", "b", "c"]
    )
    pictures = np.random.default_rng(0).integers(0, 256, (5, 200, 200), dtype=np.uint8)
    loaded = Classifier.load(classifier.save(tmp_path / "bundle"))
    assert np.array_equal(loaded.predict_proba(pictures), classifier.predict_proba(pictures))


@pytest.mark.slow
def test_tiny_classifier_learns_neu(shared_data: Path, tmp_path: Path) -> None:
    data = load_classification(copy_neu_subset(shared_data, tmp_path / "neu", per_class=30))
    split = data.splits()
    result = fit(
        data.subset(split["train"]),
        data.subset(split["validation"]),
        recipe_for("tiny", epochs=8),
        "cpu",
    )
    holdout = data.subset(split["holdout"])
    accuracy = float((result.classifier.predict(holdout.images) == holdout.labels).mean())
    assert accuracy >= 0.5, accuracy  # chance is 1/6
