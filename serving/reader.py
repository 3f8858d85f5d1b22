"""The server's one read-only warehouse connection, opened on first use (so a server
started before the first ingest becomes ready once there is a warehouse)."""

from __future__ import annotations

import logging
import threading

from serving.errors import ApiError
from warehouse.store import Warehouse

log = logging.getLogger(__name__)


class WarehouseReader:
    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self._connection = None
        self._lock = threading.Lock()

    def cursor(self):
        """A cursor of its own for the calling thread, on the shared connection."""
        with self._lock:
            if self._connection is None:
                if not self.warehouse.parquet_dir.is_dir():
                    raise ApiError(
                        503,
                        "warehouse_missing",
                        f"no warehouse at {self.warehouse.root}: run `steelsight ingest` and "
                        "`steelsight inspect` first",
                    )
                self._placeholders()
                self._connection = self.warehouse.reader()
            return self._connection.cursor()

    def _placeholders(self) -> None:
        """A warehouse written by an older steelsight lacks the empty placeholder of a
        table added since (the views need one file per table): write those first, as any
        command does. A read-only warehouse is read as it is."""
        try:
            self.warehouse.ensure()
        except OSError as error:
            log.warning("warehouse %s not brought up to date: %s", self.warehouse.root, error)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
