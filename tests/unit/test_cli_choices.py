"""The command line's choices are the ones the code behind it knows."""

from __future__ import annotations

from models.classifier.train import SIZES as CLASSIFIER_SIZES
from models.identity.detector import SIZES as DETECTOR_SIZES
from models.identity.imprint import IMPRINT_SIZES
from models.kinds import KINDS
from models.segmentation.train import SIZES as SEGMENTATION_SIZES
from steelsight.cli import DefectLook, Kind, Size
from twin.surface import LOOKS


def test_kinds_are_the_registrys() -> None:
    assert [k.value for k in Kind] == list(KINDS)


def test_sizes_are_every_recipes() -> None:
    for sizes in (SEGMENTATION_SIZES, CLASSIFIER_SIZES, DETECTOR_SIZES, IMPRINT_SIZES):
        assert [s.value for s in Size] == list(sizes)


def test_sizes_are_ordered_as_named() -> None:
    """tiny < demo < default < gpu in training work (epochs for the classifier; for
    segmentation epochs times a crop's input pixels, since `gpu` trains fewer epochs on
    crops 16 times the `default`'s; pictures seen for the detector, whose demo trains
    more epochs on fewer pictures; steps for the imprint)."""
    epochs = [CLASSIFIER_SIZES[s.value].epochs for s in Size]
    assert epochs == sorted(epochs) and epochs[0] < epochs[1], epochs
    recipes = [SEGMENTATION_SIZES[s.value] for s in Size]
    # epochs times the input pixels of one crop of a 1600 x 256 frame (the whole frame
    # without crops)
    work = [r.epochs * r.scale * 256 * (r.crop_width or r.scale * 1600) for r in recipes]
    assert work == sorted(work) and work[0] < work[1], work
    seen = [DETECTOR_SIZES[s.value].epochs * DETECTOR_SIZES[s.value].max_images for s in Size]
    assert seen == sorted(seen) and seen[0] < seen[1], seen
    steps = [IMPRINT_SIZES[s.value].epochs * IMPRINT_SIZES[s.value].steps_per_epoch for s in Size]
    assert steps == sorted(steps) and steps[0] < steps[1], steps


def test_defect_looks_are_the_twins() -> None:
    assert [look.value for look in DefectLook] == list(LOOKS)
