"""Who may become champion: a version that learnt something, then only on a better score."""

from __future__ import annotations

import math

from core.settings import Settings
from models.kinds import floor_least
from models.registry import Floor, decide, floor_of


def test_a_detector_that_finds_nothing_is_never_champion() -> None:
    least = floor_least(Settings().promotion_floors, "marking")
    floor = floor_of("marking", {"map50": 0.0}, least)
    promoted, reason = decide(0.0, None, floor)
    assert not promoted
    assert reason == (
        "holdout map50 0.0000 is below the floor 0.0500 (a model that learnt nothing "
        "scores 0.0000; promotion_floors asks +0.0500): not champion"
    )


def test_above_the_floor_the_first_model_is_champion_and_later_ones_must_beat_it() -> None:
    learnt = Floor("map50", 0.3, 0.0, 0.05)
    assert decide(0.3, None, learnt) == (True, "first model: no champion to beat")
    assert decide(0.31, 0.3, learnt)[0]
    assert not decide(0.3, 0.3, learnt)[0]
    assert not Floor("map50", math.nan, 0.0, 0.05).passed


def _segmentation(*dice_defective):
    per_class = {f"c{i}": {"dice_defective": d} for i, d in enumerate(dice_defective)}
    return {"mean_dice": 0.9, "empty_score": 0.95, "per_class": per_class}


def test_segmentation_must_find_defects_where_they_are() -> None:
    # empty masks score 0 on defective images, whatever their mean Dice
    assert not floor_of("segmentation", _segmentation(0.0, 0.0, None), 0.05).passed
    learnt = floor_of("segmentation", _segmentation(0.3, 0.0, None), 0.05)
    assert learnt.passed and learnt.value == 0.15
    assert not floor_of("segmentation", _segmentation(None, None), 0.05).passed


def test_classification_must_beat_the_commonest_class() -> None:
    per_class = {"a": {"support": 6}, "b": {"support": 2}, "c": {"support": 2}}
    assert floor_of("classification", {"accuracy": 0.6, "per_class": per_class}, 0.05).null == 0.6
    assert not floor_of("classification", {"accuracy": 0.64, "per_class": per_class}, 0.05).passed
    assert floor_of("classification", {"accuracy": 0.7, "per_class": per_class}, 0.05).passed


def test_floors_are_settings(monkeypatch) -> None:
    monkeypatch.setenv("STEELSIGHT_PROMOTION_FLOORS", '{"marking": 0.2}')
    floors = Settings().promotion_floors
    assert floor_least(floors, "marking") == 0.2 and floor_least(floors, "segmentation") == 0.05
