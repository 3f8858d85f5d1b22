"""The serving API for the plant's MES: ``create_app`` builds it, uvicorn runs it.

    uvicorn --factory serving.app:create_app      (what `steelsight serve` starts)

At start-up the lifespan loads the champion models; a background task follows the
registry (``serve_poll_s``) and swaps in new champions and newly registered sheets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from starlette.middleware.sessions import SessionMiddleware

from core.runtime import configure_environment
from core.settings import Settings, get_settings
from serving import errors, openapi
from serving.access_log import access_logger
from serving.guards import BodyGuard, request_id
from serving.inference import warm_up_batches
from serving.routers import inspect, ops, pages, sheets
from serving.security import LoginRequired, session_secret
from serving.state import ServerState

log = logging.getLogger(__name__)


async def _follow_registry(state: ServerState) -> None:
    while True:
        await asyncio.sleep(state.settings.serve_poll_s)
        if await anyio.to_thread.run_sync(state.champions.refresh):
            state.metrics.served(state.champions.current.versions)
            await _warm_inference_thread(state)


async def _warm_inference_thread(state: ServerState) -> None:
    served = state.champions.current
    if served is not None:
        batch = state.settings.serve_batch_frames
        await state.batcher.on_inference_thread(lambda: warm_up_batches(served, batch))


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: ServerState = app.state.server
    state.keys.announce()
    if await anyio.to_thread.run_sync(state.champions.refresh):
        state.metrics.served(state.champions.current.versions)
    else:
        log.error("serving no models yet: %s", state.champions.problem)
    await state.batcher.start()
    await _warm_inference_thread(state)
    follower = asyncio.create_task(_follow_registry(state), name="follow-registry")
    try:
        yield
    finally:
        follower.cancel()
        await state.batcher.stop()
        state.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_environment(settings)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    app = FastAPI(
        title="steelsight",
        summary="Steel-sheet surface inspection for the MES: defects and sheet identity "
        "from the champion models, sheets from the warehouse.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by serving.openapi from local files, not from a CDN
        redoc_url=None,
    )
    app.state.server = ServerState.build(settings)
    errors.install(app)
    app.include_router(ops.router)
    app.include_router(inspect.router)
    app.include_router(sheets.router)
    app.include_router(pages.router)
    app.add_exception_handler(LoginRequired, pages.login_redirect)
    openapi.install(app, settings.api_key_header, open_access=app.state.server.keys.open)
    # the quality page's login: a signed cookie, only for this site, for one shift
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings),
        session_cookie="steelsight_session",
        max_age=12 * 3600,
        same_site="strict",
    )
    # added before the access log's middleware, so it runs inside it: its 413s and 408s
    # are logged and counted like any other answer
    app.add_middleware(
        BodyGuard,
        one_frame_bytes=settings.max_image_bytes,
        batch_frames=settings.max_batch_frames,
        timeout_s=settings.serve_body_timeout_s,
    )
    access = access_logger()

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        rid = request_id(request.headers.get("x-request-id"))
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            seconds = time.perf_counter() - started
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            state: ServerState = request.app.state.server
            state.metrics.requests.labels(request.method, template, str(status)).inc()
            state.metrics.latency.labels(template).observe(seconds)
            access.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": request.method,
                    "path": request.url.path,
                    "route": template,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "client": getattr(request.state, "client", None),
                    "remote": request.client.host if request.client else None,
                    "frames": getattr(request.state, "frames", None),
                },
            )

    return app
