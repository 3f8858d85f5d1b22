"""Operations: liveness, readiness, Prometheus metrics, and which models are served."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from serving.openapi import UNAUTHORIZED, responses
from serving.schemas import ModelsOut
from serving.security import require_key
from serving.state import ServerState
from warehouse import reads

router = APIRouter()
log = logging.getLogger(__name__)


def _state(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/healthz", tags=["operations"], summary="The process is alive.")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get(
    "/readyz",
    tags=["operations"],
    summary="Ready to serve: models loaded and the warehouse readable (503 otherwise).",
)
def readyz(request: Request) -> JSONResponse:
    state = _state(request)
    served = state.champions.current
    checks = {
        "models": "ok" if served else f"not loaded: {state.champions.problem}",
    }
    try:
        with state.cursor() as cur:
            checks["warehouse"] = f"ok ({reads.readable(cur)} archives)"
    except Exception as error:  # any reason the warehouse cannot be read makes us unready
        checks["warehouse"] = f"not readable: {getattr(error, 'message', error)}"
    ready = all(v.startswith("ok") for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics.")
def metrics(request: Request) -> Response:
    state = _state(request)
    state.metrics.queued.set(state.batcher.queued)
    try:
        with state.cursor() as cur:
            state.metrics.drifted(reads.latest_drift(cur))
    except Exception as error:  # no warehouse yet: the other metrics all the same
        log.debug("drift not in the metrics: %s", getattr(error, "message", error))
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get(
    "/v1/models",
    tags=["models"],
    response_model=ModelsOut,
    summary="The model versions being served, and when the registry was last checked.",
    responses=responses(UNAUTHORIZED),
)
def served_models(request: Request, _client: Annotated[str, Depends(require_key)]) -> ModelsOut:
    state = _state(request)
    served = state.champions.current
    return ModelsOut(
        served=[{"kind": k, "version": v} for k, v in (served.versions if served else {}).items()],
        loaded_at=served.loaded_at if served else None,
        checked_at=state.champions.checked_at,
        registered_sheets=served.references.sheets if served else 0,
        imprint_threshold=served.threshold if served else None,
        problem=state.champions.problem,
    )
