"""Settings in one typed place, read from STEELSIGHT_* variables (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GradeRule(BaseModel):
    """A grade and the limits a sheet must keep to get it (a limit left out: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    grade: str
    max_area_ratio: float | None = Field(None, ge=0, description="Defect pixels / sheet pixels.")
    max_defects: dict[str, int] = Field(
        default_factory=dict, description="Most defects allowed per class name."
    )

    def admits(self, area_ratio: float, counts: dict[str, int]) -> bool:
        if self.max_area_ratio is not None and area_ratio > self.max_area_ratio:
            return False
        return all(counts.get(name, 0) <= limit for name, limit in self.max_defects.items())


DEFAULT_GRADES = (
    GradeRule(grade="A", max_area_ratio=0.0005, max_defects={"patches": 0, "scratches": 2}),
    GradeRule(grade="B", max_area_ratio=0.005),
    GradeRule(grade="C"),
)


def grade(rules: list[GradeRule], area_ratio: float, counts: dict[str, int]) -> str:
    """The first grade whose limits the sheet keeps to; 'ungraded' when none does."""
    return next((r.grade for r in rules if r.admits(area_ratio, counts)), "ungraded")


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
