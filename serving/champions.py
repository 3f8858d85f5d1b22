"""The models the API serves: the champions of the registry, loaded whole and swapped whole.

A ``Served`` set (serving.inference) is immutable: the segmenter, the identity models when both are
registered, the registered sheets' embeddings and the versions. The server keeps one
current set; a micro-batch takes the current set when it starts and finishes on it, so a
promotion never changes models under a running request. ``Champions.refresh`` looks at
the aliases and at the registered sheets; when either moved it loads a new set beside
the old (the old keeps serving meanwhile) and then swaps the reference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from core.settings import Settings
from models.identity.pipeline import SurfaceIndex
from serving.inference import Served, warm_up
from warehouse import reads

log = logging.getLogger(__name__)


class Champions:
    """Which set is served, and how it follows the registry."""

    def __init__(self, settings: Settings, warehouse, cursor: Callable) -> None:
        self.settings = settings
        self.warehouse = warehouse  # warehouse.store.Warehouse
        self._cursor = cursor  # a cursor on the server's read-only warehouse connection
        self.current: Served | None = None
        self.problem: str | None = "models not loaded yet"
        self.checked_at: str | None = None
        self._lock = threading.Lock()  # one refresh at a time

    # -- what the registry and the warehouse say now --------------------------------------
    def wanted_versions(self) -> dict[str, str]:
        """The champion set (models.registry.champion_set), as version strings."""
        from models import registry

        client = registry.connect(self.settings)
        return {k: str(v) for k, v in registry.champion_set(client, self.settings).items()}

    def _references_key(self, imprint_version: str | None) -> tuple:
        """What identifies the registered sheets of this imprint version right now."""
        if imprint_version is None:
            return ()
        try:
            with self._cursor() as cur:
                return reads.references_key(cur, imprint_version)
        except Exception as error:  # no warehouse yet: identify nothing, look again later
            return ("unreadable", str(error))

    def _references(self, imprint_version: str, key: tuple) -> SurfaceIndex:
        from tasks.identify import reference_index

        if key and key[0] == "unreadable":
            log.warning("registered sheets not readable, no sheet can be identified: %s", key[1])
            return SurfaceIndex.empty()
        return reference_index(
            self.warehouse, imprint_version, span=self._live_span(imprint_version)
        )

    def _live_span(self, imprint_version: str):
        """The window a frame sent now is identified in: the hours of
        settings.identity_window_hours before the station's newest picture (the line's
        present, by the station's own clock)."""
        from models.identity import surface
        from tasks.identify import registration_span
        from warehouse import queries

        newest = queries.newest_registration(self.warehouse, imprint_version, surface.FORMAT)
        return registration_span([newest], self.settings.identity_window_hours)

    # -- loading and swapping -------------------------------------------------------------
    def _load(self, versions: dict[str, str]) -> Served:
        from models import registry
        from tasks.identify import threshold_of

        started = time.perf_counter()
        loaded = {kind: registry.load_model(self.settings, kind, v) for kind, v in versions.items()}
        served = Served(
            versions=dict(versions),
            segmenter=loaded["segmentation"],
            marking=loaded.get("marking"),
            imprint=loaded.get("imprint"),
            threshold=threshold_of(self.settings),
        )
        warm_up(served)
        log.info(
            "loaded models %s in %.1f s",
            ", ".join(f"{k} v{v}" for k, v in versions.items()),
            time.perf_counter() - started,
        )
        return served

    def refresh(self) -> bool:
        """Load and swap in a new set when an alias or the registered sheets moved.
        True when the served set changed. Errors leave the current set serving."""
        with self._lock:
            self.checked_at = datetime.now(UTC).isoformat(timespec="seconds")
            try:
                wanted = self.wanted_versions()
                key = self._references_key(wanted.get("imprint"))
                current = self.current
                if current is not None and current.versions == wanted:
                    if current.references_key == key:
                        self.problem = None
                        return False
                    served = current  # same models, new registered sheets
                else:
                    served = self._load(wanted)
                if served.identifies:
                    references = self._references(wanted["imprint"], key)
                    served = replace(served, references=references, references_key=key)
            except Exception as error:  # the registry or a model file is unreachable
                self.problem = str(error)
                log.error("champion models not refreshed, serving what was loaded: %s", error)
                return False
            if current is not None and current.versions != served.versions:
                log.info("champions switched from %s to %s", current.versions, served.versions)
            self.current = served
            self.problem = None
            return True
