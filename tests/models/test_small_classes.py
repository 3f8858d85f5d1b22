"""A small class is found: the `demo` recipe, trained on a short twin recording with
pits planted on half its frames, finds pits on frames it has not seen (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.datasets import load_segmentation
from tasks.training import evaluate, prepare, train
from twin.config import TwinConfig
from twin.recorder import simulate

# Severstal's mix of the other classes, and pits on half the frames instead of 7 %.
PLANTED = TwinConfig(class_rates={1: 0.5, 2: 0.02, 3: 0.41, 4: 0.064})


def _inspection(recording: Path) -> Path:
    (folder,) = [p for p in recording.iterdir() if "inspection" in p.name]
    return folder


@pytest.mark.slow
def test_the_demo_recipe_finds_planted_pits_on_unseen_frames(tmp_path: Path) -> None:
    """Pits are 2-10 px grains, under 3 px at the recipe's quarter scale. The gate once
    learnt to turn every such frame away (recall 0: its crop targets were quarter-scale
    masks that small grains never filled, and the crops rarely held one).

    Thresholds: on a 5-sheet holdout of another seed (22 frames with pits), pits found
    on at least 35 % of their frames at a precision of at least 0.5, and a Dice of at
    least 0.15 on those frames. Five runs on this machine (seeds 0-2 on 2 threads, 0-1
    on one) gave recall 0.50-0.73, precision 0.71-0.78 and Dice 0.22-0.41 (30 training
    sheets; training 30 s on 2 threads, 47 s on one). Trained at 1/8 scale instead,
    where a grain is under a pixel, recall fell to 0.27 and Dice to 0.10. With fine
    detail, cell targets and the gate reading the mask (the recipe since 2026-12-04),
    seeds 0 and 1 gave recall 0.77 and 0.64, precision 0.77 and 0.82, Dice 0.54 and
    0.42; with the recipe's 36 epochs (2026-12-05), recall 0.91 and 0.82, precision
    0.74 and 0.78, Dice 0.75 and 0.66 (training 70 s on 2 threads)."""
    simulate(PLANTED, 30, seed=5, out=tmp_path / "train")
    simulate(PLANTED, 5, seed=6, out=tmp_path / "holdout")
    prepared = prepare("segmentation", _inspection(tmp_path / "train"), tmp_path, "demo")
    trained = train(prepared, "demo", "cpu", 0, tmp_path)

    holdout = load_segmentation(_inspection(tmp_path / "holdout"))
    pits = evaluate("segmentation", trained.model, holdout)["per_class"]["pits"]

    assert pits["images_with_class"] >= 15, pits
    assert pits["recall"] >= 0.35, pits
    assert pits["precision"] >= 0.5, pits
    assert pits["dice_defective"] >= 0.15, pits
