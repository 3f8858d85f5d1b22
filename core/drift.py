"""Drift: does what the models see in an archive look like what they were validated on?

The champion segmenter's holdout leaves a *reference* (``reference_of``): a histogram of
its frames' mean grey level and, per class, of its gate probabilities, and the share of
frames it found the class on. An inspected archive is compared with it
(``archive_drift``):

- ``level_psi``: what the camera gives, whatever the model: the population stability
  index (PSI) of the frames' mean grey level (a lamp ageing, a changed exposure).
- ``gate_psi``: what the model makes of it: the PSI of each class's gate probabilities.
- ``defect_share``: the share of frames with a defect of the class, beside the holdout's
  (reported; its shift is part of the gate's).
- ``unknown_share``: the share of sheets answered ``unknown``.
- ``identified_similarity``: the median verified similarity of the identified sheets.

PSI is ``sum((q - p) * ln(q / p))`` over the bins either sample occupies, with half a
count added to each so that a bin empty on one side does not make it infinite; below 0.1
is usually read as stable, above 0.25 as shifted (Siddiqi, *Credit Risk Scorecards*,
2006). Those readings assume large samples: two samples of n and m drawn from one
distribution already differ by about ``(B - 1) (1/n + 1/m)`` over B occupied bins (PSI
is close to a chi-square divergence).
Frames are not independent draws, though: the frames of one sheet share its steel, its
light and what the model makes of them. So n and m count *units*: the sheets of the
recording (and the table between them), the holdout's split groups (blocks of about 2 m
of line), each at most its frames. A PSI is flagged above the settings' threshold *plus*
that sampling allowance, which is written beside it as the measure's threshold: about
0.02 for an hour of a line (thousands of sheets) against a holdout of a few hundred
groups, but 0.5 and more for a recording of ten sheets, on which only a large shift (a
darker lamp) is flagged. A measure is flagged above its threshold; the archive is
drifted when any is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BINS = 10  # equal bins over [0, 1] for probabilities
LEVEL_BINS = 16  # equal bins over the grey levels 0-255


def histogram(values: np.ndarray) -> list[int]:
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=BINS, range=(0.0, 1.0))
    return [int(c) for c in counts]


def level_histogram(levels: np.ndarray) -> list[int]:
    levels = np.asarray(levels, np.float64)
    levels = levels[np.isfinite(levels)]
    counts, _ = np.histogram(np.clip(levels, 0, 255), bins=LEVEL_BINS, range=(0.0, 256.0))
    return [int(c) for c in counts]


def sampling_allowance(
    reference: Sequence[int],
    observed: Sequence[int],
    reference_units: int | None = None,
    observed_units: int | None = None,
) -> float:
    """The PSI two samples of these sizes from one distribution show by chance, about
    (B - 1)(1/n + 1/m) over the B bins either occupies; n and m are the samples'
    independent units where given (at most their counts)."""
    n, m = sum(observed), sum(reference)
    n = min(n, observed_units) if observed_units else n
    m = min(m, reference_units) if reference_units else m
    if not n or not m:
        return float("inf")
    occupied = sum(1 for a, b in zip(reference, observed, strict=True) if a or b)
    return max(occupied - 1, 0) * (1 / n + 1 / m)


def psi(reference: Sequence[int], observed: Sequence[int]) -> float:
    """Population stability index of two histograms over the same bins (counts)."""
    p, q = np.asarray(reference, np.float64), np.asarray(observed, np.float64)
    occupied = (p > 0) | (q > 0)  # a bin empty in both says nothing
    p, q = p[occupied] + 0.5, q[occupied] + 0.5
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def reference_of(
    gate: np.ndarray,
    predicted: np.ndarray,
    levels: np.ndarray,
    classes: Sequence[str],
    units: int | None = None,
) -> dict:
    """What the holdout looked like to the model: ``gate`` (N, C) probabilities,
    ``predicted`` (N, C) whether a defect of the class was found on the frame, the
    frames' mean grey ``levels`` (N,), and how many independent units (split groups) the
    frames come from."""
    return {
        "frames": len(gate),
        "units": int(units) if units else len(gate),
        "bins": BINS,
        "classes": list(classes),
        "level_histogram": level_histogram(levels),
        "gate_histogram": [histogram(gate[:, c]) for c in range(gate.shape[1])],
        "defect_share": [
            float(predicted[:, c].mean()) if len(gate) else 0.0 for c in range(gate.shape[1])
        ],
    }


@dataclass(frozen=True)
class Measure:
    measure: str
    subject: str  # a class name, or "sheets"
    value: float | None
    reference: float | None
    threshold: float | None
    samples: int

    @property
    def drifted(self) -> bool:
        return self.threshold is not None and self.value is not None and self.value > self.threshold


def _psi_measure(
    measure: str,
    subject: str,
    reference: Sequence[int],
    observed: list[int],
    threshold: float,
    units: tuple[int | None, int | None],
) -> Measure:
    n = sum(observed)
    if not n:
        return Measure(measure, subject, None, 0.0, None, 0)
    limit = threshold + sampling_allowance(reference, observed, *units)
    return Measure(measure, subject, round(psi(reference, observed), 6), 0.0, round(limit, 6), n)


def archive_drift(
    reference: dict,
    gate: np.ndarray,
    defect_frames: np.ndarray,
    levels: np.ndarray,
    sheet_ids: Sequence[str],
    similarities: Sequence[float | None],
    psi_threshold: float,
    unknown_threshold: float | None,
    units: int | None = None,
) -> list[Measure]:
    """The archive's measures against the reference. ``gate`` (N, C) and ``defect_frames``
    (N, C bool) per inspected frame, in the reference's class order, and the frames' mean
    grey ``levels`` (N,; NaN where unknown); ``sheet_ids`` and ``similarities`` per sheet
    (``unknown`` for an unidentified one); ``units``: how many independent units the
    frames come from (default: every frame one)."""
    n = len(gate)
    both = (reference.get("units"), units)
    out = []
    if "level_histogram" in reference:
        out.append(
            _psi_measure(
                "level_psi",
                "frames",
                reference["level_histogram"],
                level_histogram(levels),
                psi_threshold,
                both,
            )
        )
    for c, name in enumerate(reference["classes"]):
        out.append(
            _psi_measure(
                "gate_psi",
                name,
                reference["gate_histogram"][c],
                histogram(gate[:, c]) if n else [0] * BINS,
                psi_threshold,
                both,
            )
        )
        out.append(
            Measure(
                "defect_share",
                name,
                round(float(defect_frames[:, c].mean()), 6) if n else None,
                round(reference["defect_share"][c], 6),
                None,
                n,
            )
        )
    sheets = len(sheet_ids)
    unknown = sum(1 for s in sheet_ids if s == "unknown")
    out.append(
        Measure(
            "unknown_share",
            "sheets",
            round(unknown / sheets, 6) if sheets else None,
            None,
            unknown_threshold,
            sheets,
        )
    )
    known = [
        s for s, i in zip(similarities, sheet_ids, strict=True) if i != "unknown" and s is not None
    ]
    out.append(
        Measure(
            "identified_similarity",
            "sheets",
            round(float(np.median(known)), 6) if known else None,
            None,
            None,
            len(known),
        )
    )
    return out
