"""The drift statistic on samples drawn for it: identical samples do not drift, a shifted
one does, and the sampling allowance keeps small samples from the same distribution from
being flagged by chance while a real shift still is."""

from __future__ import annotations

import numpy as np

from core.drift import archive_drift, histogram, level_histogram, psi, reference_of


def _reference(rng: np.random.Generator, n: int = 128) -> dict:
    gate = rng.beta(0.5, 4.0, size=(n, 2))
    levels = rng.normal(110, 12, size=n)
    return reference_of(gate, gate > 0.5, levels, ["pits", "scratches"])


def _drift(reference: dict, gate: np.ndarray, levels: np.ndarray) -> dict:
    measures = archive_drift(
        reference, gate, gate > 0.5, levels, ["unknown", "S1"], [None, 0.8], 0.25, 0.5
    )
    return {(m.measure, m.subject): m for m in measures}


def test_psi_is_zero_for_the_same_histogram_and_grows_with_the_shift() -> None:
    counts = [50, 30, 10, 5, 5]
    assert psi(counts, counts) == 0.0
    assert 0 < psi(counts, [45, 33, 12, 5, 5]) < 0.02
    assert psi(counts, [5, 5, 10, 30, 50]) > 2.0
    assert sum(histogram(np.array([0.0, 0.05, 0.5, 1.0, 1.5]))) == 5
    assert level_histogram(np.array([0, 128, 255, np.nan])) == [1] + [0] * 7 + [1] + [0] * 6 + [1]


def test_samples_like_the_holdout_are_rarely_flagged_and_a_darker_camera_always() -> None:
    rng = np.random.default_rng(7)
    reference = _reference(rng)
    false_alarms = caught = 0
    for _ in range(200):
        gate = rng.beta(0.5, 4.0, size=(60, 2))
        like = _drift(reference, gate, rng.normal(110, 12, size=60))
        false_alarms += any(m.drifted for k, m in like.items() if k[0].endswith("_psi"))
        darker = _drift(reference, gate, rng.normal(70, 12, size=60))
        caught += darker[("level_psi", "frames")].drifted
    assert false_alarms <= 10  # at most 5 % of 60-frame recordings flagged by chance
    assert caught == 200


def test_the_allowance_shrinks_with_the_sample() -> None:
    rng = np.random.default_rng(3)
    reference = _reference(rng, 2000)
    small = _drift(reference, rng.beta(0.5, 4.0, (50, 2)), rng.normal(110, 12, 50))
    large = _drift(reference, rng.beta(0.5, 4.0, (5000, 2)), rng.normal(110, 12, 5000))
    key = ("level_psi", "frames")
    assert small[key].threshold > 0.3 and 0.25 < large[key].threshold < 0.27
    assert small[("unknown_share", "sheets")].value == 0.5
    assert small[("identified_similarity", "sheets")].value == 0.8
