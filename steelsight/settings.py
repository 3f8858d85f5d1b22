"""Settings in one typed place, read from STEELSIGHT_* variables (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    def mlflow_dir(self) -> Path:
        return self.home.resolve() / "mlflow"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; tests clear the cache to override them."""
    return Settings()
