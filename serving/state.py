"""What one server process holds: settings, keys, models, the batcher, metrics, warehouse."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Settings
from models.devices import use_cpu_threads
from models.kinds import NoChampion
from serving.batching import MicroBatcher
from serving.champions import Champions
from serving.images import Limits
from serving.inference import FrameJob, inspect_frames
from serving.metrics import Metrics
from serving.reader import WarehouseReader
from serving.security import KeyCheck
from warehouse.store import Warehouse


@dataclass
class ServerState:
    settings: Settings
    keys: KeyCheck
    champions: Champions
    metrics: Metrics
    batcher: MicroBatcher
    limits: Limits
    reader: WarehouseReader

    @classmethod
    def build(cls, settings: Settings) -> ServerState:
        warehouse = Warehouse(settings.warehouse_dir)
        reader = WarehouseReader(warehouse)
        champions = Champions(settings, warehouse, reader.cursor)
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
        return cls(settings, KeyCheck(settings), champions, metrics, batcher, limits, reader)

    def cursor(self):
        return self.reader.cursor()

    def close(self) -> None:
        self.reader.close()
