"""Shared fixtures: the real data beside the repo, and a private STEELSIGHT_HOME per test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# As the command line sets them (steelsight.runtime), before any test imports Keras or
# ultralytics: Keras on torch in this process, ultralytics' settings in a private folder.
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="steelsight-yolo-"))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STEELSIGHT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}: set STEELSIGHT_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh STEELSIGHT_HOME for one test, with the settings cache cleared around it."""
    from steelsight.settings import get_settings

    path = tmp_path / "home"
    monkeypatch.setenv("STEELSIGHT_HOME", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()
