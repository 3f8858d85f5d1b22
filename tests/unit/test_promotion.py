"""Who may become champion: above the promotion floor, then only on a better score."""

from __future__ import annotations

import math

from models.registry import decide, null_score
from steelsight.settings import Settings


def test_a_detector_that_finds_nothing_is_never_champion() -> None:
    floor = Settings().promotion_floors["marking"]
    promoted, reason = decide(0.0, None, floor, null_score("marking", {"map50": 0.0}))
    assert not promoted
    assert "below the floor" in reason and "0.0500" in reason


def test_above_the_floor_the_first_model_is_champion_and_later_ones_must_beat_it() -> None:
    assert decide(0.3, None, 0.05) == (True, "first model: no champion to beat")
    assert decide(0.31, 0.3, 0.05)[0]
    assert not decide(0.3, 0.3, 0.05)[0]
    assert not decide(math.nan, None, 0.05)[0]


def test_the_floor_stands_on_what_a_model_that_learnt_nothing_scores() -> None:
    # segmentation: empty masks already score 0.9 on this holdout
    assert null_score("segmentation", {"empty_score": 0.9}) == 0.9
    assert not decide(0.905, None, 0.01, 0.9)[0]
    assert decide(0.915, None, 0.01, 0.9)[0]
    # classification: always answering the commonest class
    report = {"per_class": {"a": {"support": 6}, "b": {"support": 2}, "c": {"support": 2}}}
    assert null_score("classification", report) == 0.6


def test_floors_are_settings(monkeypatch) -> None:
    monkeypatch.setenv("STEELSIGHT_PROMOTION_FLOORS", '{"marking": 0.2}')
    floors = Settings().promotion_floors
    assert floors["marking"] == 0.2 and floors["segmentation"] == 0.01
