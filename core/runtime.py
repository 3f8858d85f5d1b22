"""Process-wide defaults for the libraries steelsight drives, set before they are imported.

Everything the product writes goes under STEELSIGHT_HOME, Prefect's database too, and
nothing phones home. Values the user has set in the environment win.
"""

from __future__ import annotations

import os

from core.settings import Settings


def configure_environment(settings: Settings) -> None:
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(home / "ultralytics"),
        "ORT_DISABLE_TELEMETRY": "1",
        # Keras runs on torch in steelsight's processes (TensorFlow must not share a
        # process with torch); imprint training starts its own TensorFlow process.
        "KERAS_BACKEND": "torch",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
