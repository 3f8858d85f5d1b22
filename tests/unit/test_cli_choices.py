"""The command line's choices are the ones the code behind it knows."""

from __future__ import annotations

from models.classifier.train import SIZES as CLASSIFIER_SIZES
from models.identity.detector import SIZES as DETECTOR_SIZES
from models.identity.imprint import IMPRINT_SIZES
from models.registry import MODEL_NAMES
from models.segmentation.train import SIZES as SEGMENTATION_SIZES
from steelsight.cli import Kind, Size


def test_kinds_are_the_registrys() -> None:
    assert [k.value for k in Kind] == list(MODEL_NAMES)


def test_sizes_are_every_recipes() -> None:
    for sizes in (SEGMENTATION_SIZES, CLASSIFIER_SIZES, DETECTOR_SIZES, IMPRINT_SIZES):
        assert [s.value for s in Size] == list(sizes)
