"""Ultralytics without the network.

Ultralytics reaches out in several places: a DNS probe at import, the Arial font during
the dataset check, hub and analytics events, pretrained weights for the AMP check on GPU,
pip for missing requirements, and its own MLflow/Comet/... callbacks. steelsight turns
each off before the first import: the environment (YOLO_OFFLINE, YOLO_AUTOINSTALL and a
config folder under STEELSIGHT_HOME), a local copy of a font, and the settings file.
``tests/models/test_marking_offline.py`` fails on any connection attempt.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# Every integration ultralytics can switch on by itself, and hub/analytics sync.
SETTINGS_OFF = (
    "sync",
    "hub",
    "clearml",
    "comet",
    "dvc",
    "mlflow",
    "neptune",
    "raytune",
    "tensorboard",
    "wandb",
)


class OfflineError(RuntimeError):
    """ultralytics was imported before steelsight could configure it."""


def _font() -> Path:
    """A TTF that ships with matplotlib, used where ultralytics wants Arial."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def prepare(config_dir: Path):
    """Configure ultralytics to stay offline and return the module.

    ``config_dir`` becomes YOLO_CONFIG_DIR unless the environment already names one.
    """
    if "ultralytics" not in sys.modules:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "0"
    elif os.environ.get("YOLO_OFFLINE") != "1":
        raise OfflineError(
            "ultralytics was imported before steelsight set YOLO_OFFLINE: import "
            "models.identity.offline first"
        )
    fonts = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copyfile(_font(), fonts / name)

    import ultralytics
    from ultralytics import settings

    wanted = {key: False for key in SETTINGS_OFF if key in settings}
    if any(settings.get(key) for key in wanted):
        settings.update(wanted)
    return ultralytics
