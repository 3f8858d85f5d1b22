"""Drift of an inspected recording against the champion segmenter's holdout (core.drift):
the rows of the warehouse's drift table, written in the same import as the inspection."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from core.drift import Measure, archive_drift
from core.settings import Settings
from warehouse.schema import TABLES

log = logging.getLogger(__name__)


def reference_for(settings: Settings, segmentation_version: str) -> dict | None:
    """The champion segmenter's drift reference; None (drift not measured) for a version
    registered before holdouts kept one."""
    from models import registry

    report = registry.holdout_report(
        registry.connect(settings), "segmentation", segmentation_version
    )
    found = (report or {}).get("drift_reference")
    if found is None:
        log.warning(
            "segmentation version %s has no drift reference (registered before it was kept): "
            "drift is not measured until a retrained champion has one",
            segmentation_version,
        )
    return found


def measure(
    reference: dict, frames: pa.Table, defects: pa.Table, sheets: pa.Table, settings: Settings
) -> list[Measure]:
    """The archive's drift measures from its three inspection tables."""
    classes = list(reference["classes"])
    gates = frames.column("gate").to_pylist()
    if gates and any(len(g) != len(classes) for g in gates):
        raise ValueError(
            f"the frames have {len(gates[0])} gate classes, the reference {len(classes)}"
        )
    gate = np.asarray(gates, np.float64).reshape(len(gates), len(classes))
    row_of = {f: i for i, f in enumerate(frames.column("frame_id").to_pylist())}
    found = np.zeros(gate.shape, bool)
    for frame_id, name in zip(
        defects.column("frame_id").to_pylist(),
        defects.column("class_name").to_pylist(),
        strict=True,
    ):
        if frame_id in row_of and name in classes:
            found[row_of[frame_id], classes.index(name)] = True
    levels = np.array(
        [np.nan if v is None else v for v in frames.column("mean_level").to_pylist()],
        np.float64,
    )
    return archive_drift(
        reference,
        gate,
        found,
        levels,
        sheets.column("sheet_id").to_pylist(),
        sheets.column("similarity").to_pylist(),
        settings.drift_psi_threshold,
        settings.drift_unknown_share,
        units=sheets.num_rows + 1,  # each sheet, and the table between them
    )


def drift_rows(
    measures: list[Measure], archive_id: str, import_id: str, model_version: str
) -> pa.Table:
    rows = [
        {
            "archive_id": archive_id,
            "import_id": import_id,
            "measure": m.measure,
            "subject": m.subject,
            "value": m.value,
            "reference": m.reference,
            "threshold": m.threshold,
            "drifted": m.drifted,
            "samples": m.samples,
            "model_version": model_version,
        }
        for m in measures
    ]
    return pa.Table.from_pylist(rows, TABLES["drift"].schema)


def summary(measures: list[Measure]) -> dict:
    """What the flow reports: drifted or not, and which measures flagged it."""
    flagged = [
        {"measure": m.measure, "subject": m.subject, "value": m.value, "threshold": m.threshold}
        for m in measures
        if m.drifted
    ]
    return {"drifted": bool(flagged), "flagged": flagged}


def described(drift: dict) -> str:
    """A summary's flagged measures in one line, for the log and the terminal."""
    return ", ".join(
        f"{f['measure']} of {f['subject']} {f['value']:.3g} > {f['threshold']:.3g}"
        for f in drift["flagged"]
    )
