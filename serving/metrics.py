"""Prometheus metrics: requests, latency, micro-batch sizes, queue depth, served versions,
and what the models answered (frames, defects by class, identities by status).

Names follow Prometheus' conventions: seconds in ``_seconds``, counters in ``_total``, and
no ``_created`` series (disabled for the process: they double every counter's series and
no dashboard reads them).

With one server process the metrics live in the app's own registry. With several
(``serve_workers`` > 1) ``steelsight serve`` sets PROMETHEUS_MULTIPROC_DIR before the
processes start, every process writes its values there, and /metrics adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "steelsight_requests", "Requests answered.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "steelsight_request_seconds",
            "Time from request to response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_frames = Histogram(
            "steelsight_batch_frames", "Frames per micro-batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "steelsight_batch_seconds",
            "Model time per micro-batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "steelsight_rejected_frames", "Frames refused: queue full.", registry=r
        )
        self.queued = Gauge(
            "steelsight_queued_frames",
            "Frames waiting for the models.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model = Gauge(
            "steelsight_model_info",
            "1 for each model version served, 0 for one served before.",
            ["kind", "version"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.frames = Counter(
            "steelsight_frames_inspected", "Frames the models answered.", registry=r
        )
        self.defects = Counter(
            "steelsight_defects", "Defects found, by class.", ["class_name"], registry=r
        )
        self.identities = Counter(
            "steelsight_identities",
            "Frames answered, by identity status (identified, unknown, no_marking, not_served).",
            ["status"],
            registry=r,
        )
        self.drift = Gauge(
            "steelsight_drift",
            "The newest inspected recording's drift measures (warehouse drift table).",
            ["measure", "subject"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.drift_flagged = Gauge(
            "steelsight_drift_flagged",
            "1 when the newest inspected recording drifted from the champion's holdout.",
            ["archive_id"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self._served: dict[str, str] = {}

    def served(self, versions: dict[str, str]) -> None:
        for kind, version in self._served.items():
            if versions.get(kind) != version:
                self.model.labels(kind, version).set(0)
        for kind, version in versions.items():
            self.model.labels(kind, version).set(1)
        self._served = dict(versions)

    def answered(self, answers) -> None:
        """Count what the models said (serving.inference.FrameAnswer each)."""
        self.frames.inc(len(answers))
        for answer in answers:
            for defect in answer.defects:
                self.defects.labels(defect["class_name"]).inc()
            self.identities.labels(answer.identity["status"]).inc()

    def drifted(self, latest: tuple[str, list[dict]] | None) -> None:
        """The newest recording's drift rows (warehouse.reads.latest_drift) as gauges."""
        self.drift.clear()
        self.drift_flagged.clear()
        if latest is None:
            return
        archive_id, rows = latest
        for row in rows:
            if row["value"] is not None:
                self.drift.labels(row["measure"], row["subject"]).set(row["value"])
        self.drift_flagged.labels(archive_id).set(int(any(r["drifted"] for r in rows)))

    def batch(self, frames: int, seconds: float) -> None:
        self.batch_frames.observe(frames)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
