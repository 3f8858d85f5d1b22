"""The MLflow model registry: which model the plant runs, and how that changes.

Each kind of model has one registered name. A new version takes the ``champion`` alias
only when it scores better than the current champion on the same holdout; both scores
are written on the version. People move the alias with ``promote`` and ``rollback``; the
alias's history is a tag on the registered model, so a rollback knows where to go back.

Models are logged as MLflow pyfunc models wrapping a folder of JSON + weights, so they
load with ``mlflow.pyfunc.load_model("models:/steelsight-segmentation@champion")`` as
well as through ``load_model`` here.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

import core
import models
from core import interrupts
from core.settings import Settings
from models import kinds
from models.kinds import KINDS, Floor, NoChampion

log = logging.getLogger(__name__)

CHAMPION = "champion"
HISTORY_TAG = "champion_history"
MODEL_NAMES = MappingProxyType({k.name: k.registered_name for k in KINDS.values()})


class RegistryError(RuntimeError):
    """A registry action that cannot be done as asked (unknown version, nothing to roll back)."""


def model_name(kind: str) -> str:
    try:
        return kinds.kind(kind).registered_name
    except kinds.UnknownKind as error:
        raise RegistryError(str(error)) from None


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store (a SQLite file under home by default)."""
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    if settings.mlflow_tracking_uri is None:
        follow_moved_home(settings.mlflow_dir)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(settings.tracking_uri)


# MLflow's SQL store keeps absolute artifact locations in these columns.
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


@lru_cache  # once per process and store: a home does not move under a running process
def follow_moved_home(mlflow_dir: Path) -> None:
    """When the home was moved or copied whole, point the SQLite store's artifact
    locations at this home's artifact folder (MLflow stores them absolute), so that the
    copy's models load from the copy. Nothing is done for a store that has not moved, or
    whose artifact folders were not copied with it."""
    import sqlite3

    database = mlflow_dir / "mlflow.db"
    if not database.exists():
        return
    here = (mlflow_dir / "artifacts").as_uri()
    with sqlite3.connect(database, timeout=30) as con:
        try:
            found = con.execute(
                "SELECT artifact_location FROM experiments "
                "WHERE name IN (SELECT value FROM json_each(?))",
                (json.dumps(list(MODEL_NAMES.values())),),
            ).fetchall()
        except sqlite3.OperationalError:
            return  # a store MLflow has not set up yet
        # each of steelsight's experiments lives at <artifacts folder>/<model name>; only a
        # home whose artifacts came along is moved (a copied database alone keeps pointing
        # at the original files)
        before = {location.rsplit("/", 1)[0] for (location,) in found}
        names = [location.rsplit("/", 1)[1] for (location,) in found]
        if not all((mlflow_dir / "artifacts" / name).is_dir() for name in names):
            return
        for old in before - {here}:
            for table, column in _ARTIFACT_COLUMNS:
                try:
                    con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?",
                        (here, len(old) + 1, len(old), old),
                    )
                except sqlite3.OperationalError as error:  # another MLflow schema
                    log.warning("%s.%s not moved to %s: %s", table, column, here, error)
            log.info("MLflow store moved: artifact locations %s -> %s", old, here)


def experiment_id(client: MlflowClient, settings: Settings, kind: str) -> str:
    """The kind's experiment, created with its artifacts under home (not ./mlruns)."""
    name = model_name(kind)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (settings.mlflow_dir / "artifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


# -- pyfunc wrappers: what MLflow stores and loads --
class _Wrapper(PythonModel):
    # Inputs are checked by the tensor signature (uint8 frames), not by predict's type
    # hints; this attribute is MLflow's own switch for that (it also stops its warning).
    _skip_type_hint_validation = True


class KindModel(_Wrapper):
    """pyfunc of any kind: its family loads the bundle and predicts (models.kinds), e.g.
    segmentation: grey frames (N, H, W) uint8 → defect masks (N, C, H, W) uint8."""

    kind: str

    def __init__(self, kind: str | None = None) -> None:
        if kind is not None:
            self.kind = kind

    def load_context(self, context) -> None:
        bundle = Path(context.artifacts["bundle"])
        self.model = kinds.family(self.kind).load(bundle, _device())

    def predict(self, context, model_input, params=None):
        return kinds.family(self.kind).predict(self.model, _frames(model_input))


# The classes versions registered before KindModel were pickled with; they still load.
class SegmenterModel(KindModel):
    kind = "segmentation"


class ClassifierModel(KindModel):
    kind = "classification"


class MarkingModel(KindModel):
    kind = "marking"


class ImprintPyfunc(KindModel):
    kind = "imprint"


def _frames(model_input) -> np.ndarray:
    """The one tensor of a pyfunc input (MLflow hands named tensors over as a dict)."""
    if isinstance(model_input, dict):
        if len(model_input) != 1:
            raise ValueError(f"expected one tensor of frames, got {sorted(model_input)}")
        model_input = next(iter(model_input.values()))
    return np.asarray(model_input, dtype=np.uint8)


def _device() -> str:
    from core.settings import get_settings

    return get_settings().device


def _signature(kind: str, config: dict) -> ModelSignature:
    images = Schema([TensorSpec(np.dtype(np.uint8), kinds.input_shape(kind, config))])
    dtype, shape = kinds.family(kind).output(config)
    return ModelSignature(inputs=images, outputs=Schema([TensorSpec(dtype, shape)]))


@dataclass(frozen=True)
class Registration:
    kind: str
    version: int
    run_id: str
    score: float
    champion_before: int | None
    champion_score: float | None
    promoted: bool
    reason: str


def _flatten(prefix: str, value, out: dict[str, float]) -> dict[str, float]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        out[prefix.replace(" ", "_")] = float(value)
    return out


def log_model(
    client: MlflowClient,
    settings: Settings,
    kind: str,
    model,
    params: dict,
    history: list[dict],
    holdout: dict,
    artifacts: Path | None,
    tags: dict[str, str],
) -> tuple[int, str]:
    """One MLflow run with parameters, per-epoch and holdout metrics, plots and the model;
    the model registered as a new version. Returns (version, run id)."""
    name = model_name(kind)
    mlflow.set_tracking_uri(settings.tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id(client, settings, kind), tags=tags) as run:
        mlflow.log_params(params)
        for row in history:
            mlflow.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])
            )
        mlflow.log_metrics(
            _flatten("holdout", {k: v for k, v in holdout.items() if k != "confusion"}, {})
        )
        mlflow.log_dict(holdout, "holdout_metrics.json")
        if artifacts is not None and artifacts.is_dir():
            mlflow.log_artifacts(str(artifacts), "plots")
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # No input example on purpose: one frame is 400 kB of JSON; the signature is set.
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            bundle = model.save(Path(tmp) / "bundle")
            config = model.config()
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=KindModel(kind),
                artifacts={"bundle": str(bundle)},
                code_paths=_code(Path(tmp) / "code"),
                signature=_signature(kind, config),
                registered_model_name=name,
                pip_requirements=list(kinds.kind(kind).requirements),
                metadata={"steelsight": config},
            )
    version = int(info.registered_model_version)
    return version, run.info.run_id


# What a registered model needs of steelsight's own code to load and predict: the wrappers
# and networks (models/) and the pure bottom layer under them (core/); nothing above
# (tests/unit/test_layers.py keeps it so). Stored with the model, so that it loads where
# steelsight is not installed (`mlflow models serve`, a container).
CODE_PACKAGES = (core, models)


def _code(folder: Path) -> list[str]:
    """Copies of CODE_PACKAGES without caches, for MLflow's ``code_paths``."""
    copies = []
    for package in CODE_PACKAGES:
        source = Path(package.__file__).parent
        copy = folder / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        copies.append(str(copy))
    return copies


def champion_set(client: MlflowClient, settings: Settings) -> dict[str, int]:
    """The versions inspection and serving use (models.kinds.champion_set): the defect
    champions, and the identity champions when every identity kind has one."""
    chosen = kinds.champion_set({k: champion_version(client, k) for k in KINDS})
    if chosen is None:
        needed = ", ".join(kinds.in_role("defects"))
        raise NoChampion(
            f"no {needed} champion in {settings.tracking_uri}: train one with "
            f"`steelsight train {kinds.in_role('defects')[0]} --data DIR` (or run `make demo`)"
        )
    return chosen


def champion_version(client: MlflowClient, kind: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(model_name(kind), CHAMPION).version)
    except MlflowException:
        return None


def _history(client: MlflowClient, name: str) -> list[int]:
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def promote(
    client: MlflowClient, kind: str, version: int, reason: str, by: str = "steelsight"
) -> None:
    """Give ``version`` the champion alias and remember it in the alias's history."""
    name = model_name(kind)
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(
            f"{name} has no version {version}: `steelsight models` lists them"
        ) from None
    client.set_registered_model_alias(name, CHAMPION, str(version))
    history = _history(client, name)
    if not history or history[-1] != version:
        history.append(version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, str(version), "promoted", f"{stamp} by {by}: {reason}")
    log.info("%s version %d is champion (%s)", name, version, reason)


def rollback(client: MlflowClient, kind: str, by: str = "steelsight") -> tuple[int, int]:
    """Move the champion alias back to the version that held it before. (from, to)."""
    name = model_name(kind)
    history = _history(client, name)
    current = champion_version(client, kind)
    if current is None:
        raise RegistryError(f"{name} has no champion: nothing to roll back")
    while history and history[-1] != current:
        history.pop()  # the alias was moved outside steelsight; its record ends here
    if len(history) < 2:
        raise RegistryError(
            f"{name} version {current} is the first champion: nothing to roll back to"
        )
    history.pop()
    previous = history[-1]
    client.set_registered_model_alias(name, CHAMPION, str(previous))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(
        name, str(current), "rolled_back", f"{stamp} by {by}: back to {previous}"
    )
    log.info("%s champion rolled back from version %d to %d", name, current, previous)
    return current, previous


def floor_of(kind: str, holdout: dict, least: float) -> Floor:
    """The learning check of a holdout report (each family's ``floor``)."""
    return kinds.family(kind).floor(holdout, least)


def decide(
    score: float, champion_score: float | None, floor: Floor | None = None
) -> tuple[bool, str]:
    """Never a version below its floor; above it, the first version is champion and later
    ones must beat the champion's holdout score strictly."""
    if floor is not None and not floor.passed:
        return False, floor.reason()
    if champion_score is None:
        return True, "first model: no champion to beat"
    if score > champion_score:
        return True, f"holdout {score:.4f} beats champion's {champion_score:.4f}"
    return False, f"holdout {score:.4f} does not beat champion's {champion_score:.4f}"


def record_decision(
    client: MlflowClient,
    kind: str,
    version: int,
    run_id: str,
    score: float,
    champion_before: int | None,
    champion_score: float | None,
    holdout_digest: str,
    floor: Floor | None = None,
) -> Registration:
    """Write both scores on the new version and move the alias if it wins."""
    name = model_name(kind)
    promoted, reason = decide(score, champion_score, floor)
    tags = {
        "holdout_score": f"{score:.6f}",
        "holdout_metric": kinds.kind(kind).score,
        "holdout_digest": holdout_digest,
        "champion_version_at_registration": "" if champion_before is None else str(champion_before),
        "champion_score_at_registration": "" if champion_score is None else f"{champion_score:.6f}",
        "decision": reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    if promoted:
        promote(client, kind, version, reason, by="retrain")
    else:
        log.info("%s version %d stays a challenger: %s", name, version, reason)
    return Registration(
        kind, version, run_id, score, champion_before, champion_score, promoted, reason
    )


def register_challenger(
    settings: Settings,
    kind: str,
    model,
    params: dict,
    history: list[dict],
    holdout: dict,
    plots: Path | None,
    holdout_digest: str,
    champion: tuple[int | None, float | None],
) -> Registration:
    """Log and register a newly trained model, then let its holdout score decide. A signal
    waits until all of it is done: never a version without its decision."""
    client = connect(settings)
    tags = {"steelsight.kind": kind, "steelsight.holdout_digest": holdout_digest}
    with interrupts.critical() as achieved:
        version, run_id = log_model(
            client, settings, kind, model, params, history, holdout, plots, tags
        )
        registration = record_decision(
            client,
            kind,
            version,
            run_id,
            float(holdout[kinds.kind(kind).score]),
            champion[0],
            champion[1],
            holdout_digest,
            floor=floor_of(kind, holdout, kinds.floor_least(settings.promotion_floors, kind)),
        )
        achieved.append(
            f"registered {model_name(kind)} version {version}"
            + (" as champion" if registration.promoted else "")
        )
    return registration


def version_of(client: MlflowClient, kind: str, ref: str | int) -> int:
    """The version number behind an alias (``champion``) or a version number."""
    if str(ref).isdigit():
        return int(ref)
    try:
        return int(client.get_model_version_by_alias(model_name(kind), str(ref)).version)
    except MlflowException:
        raise RegistryError(
            f"{model_name(kind)} has no {ref!r} version: train one with "
            f"`steelsight train {kind} --data DIR`"
        ) from None


def model_uri(kind: str, ref: str | int) -> str:
    """``champion`` (or another alias) or a version number → a models:/ URI."""
    ref = str(ref)
    return (
        f"models:/{model_name(kind)}/{ref}"
        if ref.isdigit()
        else f"models:/{model_name(kind)}@{ref}"
    )


def load_model(settings: Settings, kind: str, ref: str | int = CHAMPION):
    """The model behind an alias or version, as its family loads it (Segmenter,
    Classifier, MarkingDetector, ImprintModel)."""
    client = connect(settings)
    path = list(sys.path)
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri(kind, ref))
    except MlflowException as error:
        raise RegistryError(
            f"cannot load {model_uri(kind, ref)} from {settings.tracking_uri}: {error.message}; "
            "train one with `steelsight train` or list them with `steelsight models`"
        ) from None
    finally:  # MLflow put the model's copy of the code first; this process has its own
        sys.path[:] = path
    model = pyfunc.unwrap_python_model().model
    from models.devices import resolve_device  # torch: not for listing or promoting

    if resolve_device(settings.device).type != "cpu":
        return model
    if settings.cpu_precision == "bfloat16" and hasattr(model, "in_bfloat16"):
        log.info("%s %s runs on torch in bfloat16 (cpu_precision)", kind, ref)
        return model.in_bfloat16()
    if settings.inference_engine != "torch":
        model = _on_onnx(client, settings, kind, ref, model)
    return model


# -- ONNX graphs beside the registered models (`steelsight export`, tasks/export.py) --
ONNX_TAG = "onnx"  # on a model version: the export's check, JSON (``register_onnx``)
ONNX_FOLDER = "onnx"  # artifact folder of the version's run holding the graph


def register_onnx(client: MlflowClient, kind: str, version: int, graph: Path, check: dict) -> None:
    """The ONNX graph of version ``version`` logged beside its model (the run's
    ``onnx/`` artifacts), and the export's ``check`` (agreement, speeds, whether ONNX
    Runtime is faster) on the version as its ``onnx`` tag."""
    name = model_name(kind)
    run_id = client.get_model_version(name, str(version)).run_id
    client.log_artifact(run_id, str(graph), ONNX_FOLDER)
    check = {**check, "artifact": f"{ONNX_FOLDER}/{graph.name}"}
    client.set_model_version_tag(name, str(version), ONNX_TAG, json.dumps(check))


def onnx_check(client: MlflowClient, kind: str, ref: str | int) -> tuple[str, dict] | None:
    """The run and export check of the version behind ``ref``; None when not exported."""
    try:
        found = client.get_model_version(model_name(kind), str(version_of(client, kind, ref)))
    except (MlflowException, RegistryError):
        return None
    tag = found.tags.get(ONNX_TAG)
    return (found.run_id, json.loads(tag)) if tag else None


def holdout_report(client: MlflowClient, kind: str, ref: str | int) -> dict | None:
    """The holdout report the version was registered with (its per-class table and, for
    the segmenter, its drift reference); None when the registry has none."""
    try:
        found = client.get_model_version(model_name(kind), str(version_of(client, kind, ref)))
        return mlflow.artifacts.load_dict(f"runs:/{found.run_id}/holdout_metrics.json")
    except (MlflowException, RegistryError, OSError) as error:
        log.warning("%s %s: no holdout report (%s)", kind, ref, error)
        return None


def _on_onnx(client: MlflowClient, settings: Settings, kind: str, ref: str | int, model):
    """``model`` running its exported graph, when the settings and its export say so."""
    exported = onnx_check(client, kind, ref)
    if exported is None:
        return model
    run_id, check = exported
    if settings.inference_engine == "auto" and not check.get("faster"):
        return model
    try:
        graph = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=check["artifact"])
        model = model.run_onnx(Path(graph))
    except Exception as error:  # a missing artifact, a graph this ONNX Runtime refuses
        problem = f"{kind} {ref}: its ONNX graph ({check['artifact']}) cannot run: {error}"
        if settings.inference_engine == "onnx":
            raise RegistryError(
                f"{problem}; export it again (`steelsight export --kind {kind}`) or set "
                "STEELSIGHT_INFERENCE_ENGINE=auto"
            ) from None
        log.warning("%s; it runs on torch", problem)
        return model
    log.info("%s %s runs on ONNX Runtime (%s)", kind, ref, settings.inference_engine)
    return model


def versions(client: MlflowClient, kind: str) -> list[dict]:
    """Every version of a kind, newest first, with its scores and aliases."""
    name = model_name(kind)
    champion = champion_version(client, kind)
    rows = []
    for v in client.search_model_versions(f"name = '{name}'"):
        rows.append(
            {
                "version": int(v.version),
                "champion": int(v.version) == champion,
                "holdout_score": v.tags.get("holdout_score", ""),
                "champion_score_at_registration": v.tags.get("champion_score_at_registration", ""),
                "decision": v.tags.get("decision", ""),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                "run_id": v.run_id,
            }
        )
    return sorted(rows, key=lambda r: -r["version"])
