"""Structured access logs: one JSON object per request on stderr (logger steelsight.access),
with the answering process's pid (several with ``serve_workers`` > 1)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def access_logger() -> logging.Logger:
    logger = logging.getLogger("steelsight.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(process)d %(message)s",
                rename_fields={
                    "asctime": "time",
                    "levelname": "level",
                    "process": "pid",
                    "message": "event",
                },
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
