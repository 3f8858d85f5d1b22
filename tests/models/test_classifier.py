"""The NEU classifier: data loading, training on real NEU images, registry and evaluate."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.classifier.classifier import Classifier
from models.classifier.network import ClassifierSpec, ResNetClassifier
from models.classifier.train import _augment, class_weights, fit, recipe_for
from models.data import ClassificationData
from models.kinds import within_budget
from models.preprocess import Preprocess, with_channels
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


def write_colour_set(folder: Path, per_class: int) -> Path:
    """Class folders of noisy pictures whose classes differ only in colour: each class adds
    a chroma that OpenCV's grey weights cancel, so in grey the classes look alike."""
    rng = np.random.default_rng(0)
    chroma = {"blue_scale": (0.0, -9.7, 50.0), "red_scale": (40.0, -20.4, 0.0)}
    for name, rgb_shift in chroma.items():
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            grey = cv2.GaussianBlur(rng.uniform(70, 180, (48, 48)), (0, 0), 2)
            rgb = np.clip(grey[..., None] + np.array(rgb_shift), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / name / f"{k}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def test_a_colour_set_is_classified_in_colour(tmp_path: Path) -> None:
    """A plant's class folders in colour keep their colour: here only colour tells the
    classes apart, which a grey classifier cannot learn."""
    data = load_classification(write_colour_set(tmp_path / "colour", per_class=60))
    assert data.images.shape[1:] == (48, 48, 3)
    grey = with_channels(data.images, 1).astype(np.float32)
    assert abs(grey[data.labels == 0].mean() - grey[data.labels == 1].mean()) < 1  # no grey cue
    split = data.splits()
    train, validation = data.subset(split["train"]), data.subset(split["validation"])
    unseen = data.subset(np.concatenate([split["validation"], split["holdout"]]))
    recipe = recipe_for("tiny", epochs=6)
    colour = fit(train, validation, recipe, "cpu").classifier
    assert colour.spec.channels == 3
    assert float((colour.predict(unseen.images) == unseen.labels).mean()) >= 0.9

    # the control: the same pictures in grey
    train, validation = (replace(d, images=with_channels(d.images, 1)) for d in (train, validation))
    blind = fit(train, validation, recipe, "cpu").classifier
    assert blind.spec.channels == 1
    assert float((blind.predict(with_channels(unseen.images, 1)) == unseen.labels).mean()) <= 0.75

    loaded = Classifier.load(colour.save(tmp_path / "bundle"))
    assert loaded.spec.channels == 3
    assert np.array_equal(loaded.predict_proba(unseen.images), colour.predict_proba(unseen.images))
    assert loaded.predict_proba(grey.astype(np.uint8)[:3]).shape == (3, 2)  # grey is taken too


@pytest.mark.e2e
def test_train_registers_a_colour_classifier_that_mlflow_serves_in_colour(
    home: Path, tmp_path: Path
) -> None:
    """`steelsight train classification` on colour class folders, as a user runs it: the
    registered model's signature takes RGB pictures and its pyfunc answers them."""
    import mlflow

    from core.settings import get_settings
    from models import registry

    folder = write_colour_set(tmp_path / "colour", per_class=30)
    steelsight = Path(sys.executable).parent / "steelsight"
    command = [str(steelsight), "train", "classification", "--data", str(folder), "--size", "tiny"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stderr[-2000:]

    registry.connect(get_settings())
    pyfunc = mlflow.pyfunc.load_model(registry.model_uri("classification", "champion"))
    assert pyfunc.metadata.get_input_schema().inputs[0].shape == (-1, -1, -1, 3)
    pictures = load_classification(folder).images[:4]
    assert pictures.shape == (4, 48, 48, 3)
    probabilities = pyfunc.predict(pictures)
    assert probabilities.shape == (4, 2)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


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


def test_members_average_their_probabilities_and_survive_saving(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ClassifierSpec("resnet10", 3, members=3)
    net = ResNetClassifier(spec).eval()
    pictures = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    classifier = Classifier(net, spec, Preprocess(48, 48, 0.5, 0.2), ["a", "b", "c"])
    x = torch.from_numpy(classifier.preprocess(pictures))
    with torch.no_grad():
        each = [member(x).softmax(dim=1).numpy() for member in net.members]
    assert not np.allclose(each[0], each[1], atol=1e-4)  # the members differ
    probabilities = classifier.predict_proba(pictures)
    assert np.allclose(probabilities, np.mean(each, axis=0), atol=1e-5)
    loaded = Classifier.load(classifier.save(tmp_path / "bundle"))
    assert loaded.spec.members == 3
    assert np.array_equal(loaded.predict_proba(pictures), probabilities)


def test_quarter_turns_can_be_left_out_of_training() -> None:
    x = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(2, 1, 10, 10)
    g = torch.Generator().manual_seed(0)
    turned = 0
    for turns in (False, True):
        for _ in range(20):
            out = _augment(x, g, turns=turns)
            # gain, offset, flips and the shift aside, steps along a row stay steps along a
            # row unless the picture was turned (a step of 10 along its columns)
            steps = (out[:, 0, :, 1:] - out[:, 0, :, :-1]).abs()
            along_rows = (steps.median(dim=-1).values.median(dim=-1).values < 2).tolist()
            assert all(along_rows) or turns
            turned += along_rows.count(False)
    assert turned > 5  # with turns, about half the pictures


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


def test_crops_keep_the_pictures_scale_and_inference_sees_the_whole_picture() -> None:
    # pictures of unique values: a crop is a window of one, up to flips, gain and offset,
    # not a resized picture
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.randperm(144, generator=g).float().reshape(1, 12, 12) for _ in "ab"])
    windows = x[:, 0].unfold(1, 8, 1).unfold(2, 8, 1)  # (2, 5, 5, 8, 8): every 8x8 window
    lows = windows.amin(dim=(-2, -1), keepdim=True)
    windows = (windows - lows) / (windows.amax(dim=(-2, -1), keepdim=True) - lows)
    places = set()
    for _ in range(10):
        out = _augment(x, g, turns=False, crop=8)
        assert out.shape == (2, 1, 8, 8)
        for k, crop in enumerate(out[:, 0]):
            crop = (crop - crop.min()) / (crop.max() - crop.min())
            flips = [crop, crop.flip(0), crop.flip(1), crop.flip((0, 1))]
            hits = [(windows[k] - f).abs().amax(dim=(-2, -1)) < 1e-4 for f in flips]
            where = torch.stack(hits).any(dim=0).nonzero().tolist()
            assert len(where) == 1, where
            places.add((k, *where[0]))
    assert len(places) > 8  # cut at many places
    recipe = recipe_for("tiny", crop=24, epochs=1)
    pictures = np.random.default_rng(0).integers(0, 255, (24, 40, 40), np.uint8)
    labels = np.arange(24) % 2
    data = ClassificationData("random", [str(i) for i in range(24)], pictures, labels, ["a", "b"])
    classifier = fit(data, data, replace(recipe, input_size=40), "cpu").classifier
    assert classifier.preprocess.height == classifier.preprocess.width == 40
    assert classifier.predict_proba(pictures).shape == (24, 2)


def test_a_larger_set_trains_fewer_epochs_within_the_recipes_budget() -> None:
    """The `default` recipe is sized on NEU (972 training pictures, 24 epochs a member):
    NEU keeps its 24, a set three times as large trains 8, so the recipe's 30 minutes
    hold; the epochs trained are the ones recorded."""
    default = recipe_for("default")
    assert within_budget(default, 972).epochs == 24
    assert within_budget(default, 3 * 972).epochs == 8
    assert within_budget(default, 10**6).epochs == 1
    assert within_budget(replace(default, pictures=0), 10**6).epochs == 24

    pictures = np.random.default_rng(0).integers(0, 255, (20, 24, 24), np.uint8)
    data = ClassificationData(
        "random", [str(i) for i in range(20)], pictures, np.arange(20) % 2, ["a", "b"]
    )
    recipe = recipe_for("tiny", input_size=24, epochs=5, members=2, pictures=40)
    result = fit(data, data, recipe, "cpu")
    assert result.recipe.epochs == 2
    assert [row["member"] for row in result.history] == [1, 1, 2, 2]
