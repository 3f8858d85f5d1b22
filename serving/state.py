"""What one server process holds: settings, keys, models, the batcher, metrics, warehouse."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from models.devices import use_cpu_threads
from serving.batching import MicroBatcher
from serving.champions import Champions, NoChampion
from serving.errors import ApiError
from serving.images import Limits
from serving.inference import FrameJob, inspect_frames
from serving.metrics import Metrics
from serving.security import KeyCheck
from steelsight.settings import Settings
from warehouse.store import Warehouse


@dataclass
class ServerState:
    settings: Settings
    keys: KeyCheck
    champions: Champions
    metrics: Metrics
    batcher: MicroBatcher
    limits: Limits
    warehouse: Warehouse
    _reader: object = None
    _reader_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> ServerState:
        warehouse = Warehouse(settings.warehouse_dir)
        champions = Champions(settings, warehouse)
        metrics = Metrics()

        def run(jobs: list[FrameJob]):
            served = champions.current  # taken once: the whole batch runs on this set
            if served is None:
                raise NoChampion(champions.problem or "no models loaded")
            use_cpu_threads()
            return inspect_frames(served, jobs)

        batcher = MicroBatcher(
            run,
            max_batch=settings.serve_batch_frames,
            max_wait_s=settings.serve_batch_wait_ms / 1000,
            capacity=settings.serve_queue_frames,
            on_batch=metrics.batch,
        )
        limits = Limits(settings.max_image_bytes, settings.max_image_pixels)
        return cls(settings, KeyCheck(settings), champions, metrics, batcher, limits, warehouse)

    def cursor(self):
        """A cursor on the read-only warehouse connection (opened on first use, so a
        server started before the first ingest becomes ready once there is one)."""
        with self._reader_lock:
            if self._reader is None:
                if not self.warehouse.parquet_dir.is_dir():
                    raise ApiError(
                        503,
                        "warehouse_missing",
                        f"no warehouse at {self.warehouse.root}: run `steelsight ingest` and "
                        "`steelsight inspect` first",
                    )
                self._reader = self.warehouse.reader()
            return self._reader.cursor()

    def close(self) -> None:
        self.champions.close()
        if self._reader is not None:
            self._reader.close()
