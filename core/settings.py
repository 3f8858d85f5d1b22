"""Settings in one typed place, read from STEELSIGHT_* variables (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.grading import DEFAULT_GRADES, GradeRule


class Settings(BaseSettings):
    """Everything steelsight writes lives under ``home``; the other paths derive from it."""

    model_config = SettingsConfigDict(env_prefix="STEELSIGHT_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path(".steelsight"),
        description="Data directory: warehouse, MLflow store, landing, quarantine.",
    )

    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server or store; default a SQLite store under home/mlflow.",
    )
    device: str = Field(
        default="auto", description="Where models run: auto (GPU when present), cpu, cuda, cuda:N."
    )
    inference_engine: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="What runs the networks on the CPU: auto takes a model's ONNX graph "
        "(`steelsight export`) on ONNX Runtime where its export measured it faster than "
        "torch with equal outputs, torch otherwise; onnx takes every exported graph; torch "
        "never does. On a GPU the networks run on torch.",
    )
    cpu_precision: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="What the defect segmenter computes in on the CPU: bfloat16 runs it "
        "on torch in bfloat16, channels-last, whatever the engine (its ONNX graph is "
        "float32). Only for CPUs with AMX (Intel Xeon from the 4th generation), where the "
        "default segmenter ran 2.9 times as fast as on ONNX Runtime with the same holdout "
        "Dice within 0.013 (docs/benchmarks.md); elsewhere bfloat16 is emulated, slowly.",
    )
    compile_networks: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Whether an inspect worker compiles the defect segmenter's network "
        "(torch.compile, for its batch of frames; a range's last, shorter batch is padded): "
        "auto on a GPU only, on also on the CPU where the network runs on torch (not on "
        "ONNX Runtime), off never. On one H200 the `default` segmenter ran 6,488 frames/s "
        "end to end from JPEG frames compiled, against 2,879; on 2 CPU cores about as fast "
        "as on ONNX Runtime (docs/benchmarks.md). Compiling takes 15-30 s once per worker "
        "and needs a C++ compiler on the CPU. The API does not compile: its batches take "
        "every size from 1 to 16.",
    )
    identify_in: Literal["auto", "threads", "processes"] = Field(
        default="auto",
        description="Where an inspect worker identifies a batch's markings: on threads, "
        "one per core, or in processes, as many as its cores, each holding the registered "
        "sheets it searches (started once per set of sheets). Identification is Python "
        "between OpenCV's calls: on 16 cores threads identified about 45 markings a second, "
        "16 processes 175 (docs/benchmarks.md). auto: processes on a GPU worker, threads on "
        "the CPU. A worker that may not start processes (Dask's default for `dask worker`: "
        "set DASK_DISTRIBUTED__WORKER__DAEMON=False) uses threads and says so.",
    )

    video_readers: int = Field(
        default=0,
        ge=0,
        description="Readers an inspect worker decodes a video's frame range with at once, "
        "each on its own part with one FFmpeg thread. FFmpeg's own threads decode one "
        "stream at about 500 frames/s however many cores (docs/benchmarks.md). 0 (auto): "
        "as many as the worker's cores on a GPU worker; one on the CPU, where FFmpeg's "
        "threads decode as fast and the models take the cores.",
    )

    ingest_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="Longest one archive's validation may take (every frame is decoded); "
        "an archive that takes longer is quarantined with the reason.",
    )
    ingest_memory_mb: int = Field(
        default=4096,
        ge=512,
        description="Address space of the process validating one archive, MB; an archive "
        "that needs more (a frame far larger than its manifest says) is quarantined.",
    )

    dask_address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786); default: a "
        "LocalCluster sized to this machine, started for the run.",
    )
    chunk_frames: int = Field(
        default=64, ge=1, description="Frames per Dask task of the inspect flow."
    )
    batch_frames: int = Field(default=16, ge=1, description="Frames per model call.")
    grades: list[GradeRule] = Field(
        default_factory=lambda: list(DEFAULT_GRADES),
        description="Sheet grading rules, tried in order; the first a sheet satisfies "
        "gives its grade (JSON list in STEELSIGHT_GRADES).",
    )

    drift_psi_threshold: float = Field(
        default=0.25,
        gt=0.0,
        description="An inspected archive is flagged as drifted when the population "
        "stability index of any class's gate probabilities, against the champion "
        "segmenter's holdout, is above this (0.1: stable; 0.25: shifted).",
    )
    drift_unknown_share: float | None = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="An inspected archive is flagged as drifted when more than this share "
        "of its sheets is answered 'unknown'; null: not flagged on identity.",
    )
    identity_window_hours: float = Field(
        default=24.0,
        ge=0.0,
        description="A recording's sheets are looked for among those the marking station "
        "pictured from this many hours before its first frame to 15 minutes after its "
        "last; 0: the whole registry. Bounds the search and the memory of every worker "
        "(about 100 kB per registered sheet); raise it where sheets wait longer between "
        "the station and the camera.",
    )
    identity_threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Verified score of the steel around a marking against a registered "
        "sheet's (the correlation three quarters of the window's tiles reach) at which the "
        "sheet is named; below it the answer is 'unknown'. A value chosen before "
        "2026-12-03 was for the whole window's correlation: choose it again. Default: "
        "the value calibrated on the twin for 0.1 % wrong IDs per query "
        "(models/identity/surface.py VERIFY_THRESHOLD); calibrate on a plant's own "
        "station/inspection pairs: `steelsight evaluate identity` prints the threshold a "
        "pair asks for.",
    )

    promotion_floors: dict[str, float] = Field(
        default_factory=dict,
        description="Per model kind, how far a new version must score above a model that "
        "learnt nothing on its holdout before retraining may make it champion: "
        "segmentation, mean Dice on the images showing each class (empty masks: 0); "
        "classification, accuracy above always answering the commonest class; marking, "
        "mAP50; imprint, its sheet among the paint's candidates above chance. Below it "
        "the version is registered without "
        "the alias (`steelsight promote` still can). JSON object in "
        'STEELSIGHT_PROMOTION_FLOORS, e.g. {"marking": 0.1}; a kind left out keeps its '
        "default (0.05; models/kinds.py). A kind steelsight does not know stops a retrain "
        "before it trains.",
    )

    # -- the serving API (steelsight serve) --
    serve_host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    serve_port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    serve_workers: int = Field(
        default=1,
        ge=1,
        description="Server processes; each loads the models (one per GPU is the usual choice).",
    )
    api_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Client name → API key (JSON object in STEELSIGHT_API_KEYS); a request "
        "sends its key in the api_key_header. Keys are at least 16 characters.",
    )
    api_key_header: str = Field(default="X-API-Key", description="Header that carries the key.")
    allow_no_keys: bool = Field(
        default=False,
        description="Serve without API keys when none are configured (the demo only); "
        "the server announces it at start.",
    )
    max_image_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest image body accepted, bytes."
    )
    max_image_pixels: int = Field(
        default=16 * 1024 * 1024, ge=1, description="Largest image accepted, width x height."
    )
    max_batch_frames: int = Field(
        default=32, ge=1, description="Most frames in one /v1/inspect/batch request."
    )
    serve_batch_frames: int = Field(
        default=16, ge=1, description="Most frames the models take in one micro-batch."
    )
    serve_batch_wait_ms: float = Field(
        default=1.0,
        ge=0,
        description="How long a micro-batch waits for more frames once it has one.",
    )
    serve_queue_frames: int = Field(
        default=64,
        ge=1,
        description="Frames allowed to wait for the models; beyond it requests get 503 "
        "with Retry-After instead of ever-growing latency.",
    )
    serve_head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a client may take to send a request's line and headers; a "
        "slower one gets 408 and is disconnected.",
    )
    serve_body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a client may take to send a request's body (408 after).",
    )
    serve_max_head_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="Largest request line and headers accepted, bytes (431 beyond).",
    )
    serve_poll_s: float = Field(
        default=10.0,
        gt=0,
        description="How often the server checks the champion aliases and the registered "
        "sheets, seconds.",
    )

    @field_validator("promotion_floors")
    @classmethod
    def _floors_are_scores(cls, floors: dict[str, float]) -> dict[str, float]:
        # the kinds are checked against models.kinds where a floor is used (retrain)
        wrong = sorted(k for k, v in floors.items() if not -1.0 <= v <= 1.0)  # NaN too
        if wrong:
            raise ValueError(
                f"promotion_floors for {', '.join(wrong)} are not between -1 and 1 "
                "(a difference of holdout scores)"
            )
        return floors

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        short = [name for name, key in keys.items() if len(key.get_secret_value()) < 16]
        if short:
            raise ValueError(
                f"API keys of {', '.join(sorted(short))} are shorter than 16 characters: "
                "use random keys, e.g. from "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return keys

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def warehouse_dir(self) -> Path:
        return self.home.resolve() / "warehouse"

    @property
    def landing_dir(self) -> Path:
        return self.home.resolve() / "landing"

    @property
    def quarantine_dir(self) -> Path:
        return self.home.resolve() / "quarantine"

    @property
    def library_dir(self) -> Path:
        """Where ingested archives from the landing folder are kept."""
        return self.home.resolve() / "archives"

    @property
    def mlflow_dir(self) -> Path:
        return self.home.resolve() / "mlflow"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; tests clear the cache to override them."""
    return Settings()
