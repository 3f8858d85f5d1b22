"""The import flow under a real (test-harness) Prefect server, writing a real warehouse."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from core.settings import get_settings
from flows.import_labels import import_labels
from warehouse.store import Warehouse


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_flow_imports_each_folder_as_a_task(prefect_server, shared_data: Path, home: Path) -> None:
    state = import_labels(
        [str(shared_data / "severstal-sample"), str(shared_data / "neu-det")], return_state=True
    )
    assert state.is_completed()
    summaries = state.result()
    assert [(s.kind, s.n_labels) for s in summaries] == [("severstal", 19), ("neu-det", 3482)]
    counts = Warehouse(get_settings().warehouse_dir).row_counts()
    assert (counts["archives"], counts["images"], counts["labels"]) == (2, 1520, 3501)


@pytest.mark.slow
def test_flow_fails_when_a_folder_gives_nothing(prefect_server, tmp_path: Path, home: Path) -> None:
    folder = tmp_path / "broken"
    (folder / "train_images").mkdir(parents=True)
    (folder / "train.csv").write_text("wrong,header\n")
    state = import_labels([str(folder)], return_state=True)
    assert state.is_failed()
    errors = (
        Warehouse(get_settings().warehouse_dir)
        .query("SELECT error_kind, reason FROM ingest_errors")
        .to_pylist()
    )
    assert [e["error_kind"] for e in errors] == ["unreadable_labels"]
