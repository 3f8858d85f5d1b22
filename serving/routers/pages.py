"""The quality page: what the line saw, for the quality engineer and the shift lead.

    /ui/sheets                 the sheets seen, filterable (hours, grade, identity, line)
    /ui/sheets/{archive}/{n}   one sheet: its map to scale, its defects, its frames drawn
    /ui/inspect                upload a frame, see its defects and class probabilities
    /ui/models                 the models in service and their holdout scores per class
    /ui/drift                  each inspected recording against the champion's holdout

Server-rendered (Jinja2), no script, nothing from a CDN: plants are air-gapped. Behind
the same API keys as the API: a login form takes a key and sets a signed session cookie.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from core import drawing
from serving.errors import ApiError
from serving.images import check_media_type, decode_frame
from serving.inference import FrameJob
from serving.routers.inspect import submit
from serving.security import LoginRequired, page_client
from serving.state import ServerState
from warehouse import reads

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[1] / "templates")
templates.env.globals["class_colour"] = drawing.hex_colour
Client = Annotated[str, Depends(page_client)]


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _page(
    request: Request, template: str, client: str, status: int = 200, **context
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {"client": client, "open_access": _state(request).keys.open, **context},
        status_code=status,
    )


def _safe_next(target: str | None) -> str:
    """Only a path of this page after login: never another site."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/sheets"


@router.get("", response_class=RedirectResponse)
def home() -> RedirectResponse:
    return RedirectResponse("/ui/sheets", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "login.html", {"next": _safe_next(next), "client": None, "problem": None}
    )


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    key: Annotated[str, Form(max_length=4096)],
    next: Annotated[str, Form(max_length=2048)] = "/ui/sheets",
) -> Response:
    client = _state(request).keys.client(key)
    if client is None:
        return templates.TemplateResponse(
            request,
            "login.html",
            {
                "next": _safe_next(next),
                "client": None,
                "problem": "That key is not one configured for this server: use the key "
                "your plant administrator gave you (the same as for the API).",
            },
            status_code=401,
        )
    request.session["client"] = client
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    return RedirectResponse("/ui/login", status_code=303)


@router.get("/sheets", response_class=HTMLResponse)
def sheets(
    request: Request,
    client: Client,
    hours: Annotated[float | None, Query(gt=0, le=24 * 366)] = None,
    grade: Annotated[str | None, Query(max_length=32)] = None,
    identity: Annotated[str | None, Query(max_length=16)] = None,
    line: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> HTMLResponse:
    since = datetime.now(UTC) - timedelta(hours=hours) if hours else None
    identified = {"identified": True, "unknown": False}.get(identity or "")
    with _state(request).cursor() as cur:
        rows = reads.sheet_passes(
            cur,
            since=since,
            grade=grade or None,
            limit=limit,
            identified=identified,
            line_id=line or None,
        )
        lines = reads.line_ids(cur)
    return _page(
        request,
        "sheets.html",
        client,
        sheets=rows,
        lines=lines,
        filters={"hours": hours, "grade": grade, "identity": identity, "line": line},
        limit=limit,
    )


SheetRef = Annotated[int, PathParam(ge=0, le=10_000_000)]
ArchiveRef = Annotated[str, PathParam(min_length=1, max_length=256)]


@router.get("/sheets/{archive_id}/{sheet_index}", response_class=HTMLResponse)
def sheet(
    request: Request, archive_id: ArchiveRef, sheet_index: SheetRef, client: Client
) -> HTMLResponse:
    with _state(request).cursor() as cur:
        found = reads.sheet_to_draw(cur, archive_id, sheet_index)
        if found is None:
            return _page(
                request,
                "missing.html",
                client,
                404,
                what=f"No sheet {sheet_index} in recording {archive_id}.",
            )
        defects = reads.sheet_defects(cur, archive_id, sheet_index)
        frames = reads.sheet_frames(cur, archive_id, found["first_frame"], found["last_frame"])
    return _page(request, "sheet.html", client, sheet=found, defects=defects, frames=frames)


def _picture(request: Request, draw, *args) -> Response:
    """A PNG drawn from the warehouse (tasks.sheet_maps); 404 saying why it cannot be."""
    from tasks.sheet_maps import SheetMapError

    try:
        with _state(request).cursor() as cur:
            picture = draw(cur, *args)
    except SheetMapError as error:
        raise ApiError(404, "no_picture", str(error)) from None
    return Response(drawing.png(picture), media_type="image/png")


@router.get("/sheets/{archive_id}/{sheet_index}/map.png")
def sheet_map_png(
    request: Request, archive_id: ArchiveRef, sheet_index: SheetRef, _client: Client
) -> Response:
    from tasks.sheet_maps import sheet_map

    return _picture(request, sheet_map, archive_id, sheet_index)


@router.get("/frames/{archive_id}/{frame_id}.png")
def frame_png(
    request: Request,
    archive_id: ArchiveRef,
    frame_id: Annotated[str, PathParam(min_length=1, max_length=256)],
    _client: Client,
) -> Response:
    from tasks.sheet_maps import frame_overlay

    return _picture(request, frame_overlay, archive_id, frame_id)


@router.get("/inspect", response_class=HTMLResponse)
def inspect_form(request: Request, client: Client) -> HTMLResponse:
    return _page(request, "inspect.html", client, answer=None, problem=None)


@router.post("/inspect", response_class=HTMLResponse)
async def inspect_upload(request: Request, client: Client) -> HTMLResponse:
    """One uploaded frame through the same models and micro-batches as /v1/inspect."""
    state = _state(request)
    try:
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("frame")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise ApiError(400, "no_frame", "choose a frame (a JPEG or PNG file) to upload")
        check_media_type(upload.content_type, f"file {upload.filename}")
        data = await upload.read()
        await form.close()
        frame = await run_in_threadpool(decode_frame, data, state.limits, upload.filename)
        request.state.frames = 1
        (answer,) = await submit(state, [FrameJob(frame, overlay=True)])
    except ApiError as error:
        return _page(
            request, "inspect.html", client, error.status, answer=None, problem=error.message
        )
    return _page(
        request,
        "inspect.html",
        client,
        answer=answer,
        frame_name=upload.filename,
        problem=None,
        gate=sorted(answer.gate.items(), key=lambda kv: -kv[1]),
        class_ids={d["class_name"]: d["class_id"] for d in answer.defects},
        overlay=answer.overlay_png,
    )


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, client: Client) -> HTMLResponse:
    from models import registry

    state = _state(request)
    served = state.champions.current
    versions = served.versions if served else {}
    rows = []
    try:
        mlflow_client = registry.connect(state.settings)
        for kind, version in versions.items():
            report = registry.holdout_report(mlflow_client, kind, version) or {}
            found = [
                v for v in registry.versions(mlflow_client, kind) if str(v["version"]) == version
            ]
            rows.append(
                {
                    "kind": kind,
                    "version": version,
                    "report": report,
                    "registered": found[0] if found else {},
                }
            )
        problem = state.champions.problem
    except Exception as error:  # the registry unreachable: say so, show what is served
        problem = f"the model registry cannot be read: {error}"
        rows = [
            {"kind": k, "version": v, "report": {}, "registered": {}} for k, v in versions.items()
        ]
    return _page(
        request,
        "models.html",
        client,
        rows=rows,
        problem=problem,
        loaded_at=served.loaded_at if served else None,
        registered_sheets=served.references.sheets if served else 0,
    )


@router.get("/drift", response_class=HTMLResponse)
def drift_page(
    request: Request,
    client: Client,
    archive: Annotated[str | None, Query(max_length=256)] = None,
) -> HTMLResponse:
    with _state(request).cursor() as cur:
        overview = reads.drift_overview(cur)
        chosen = archive or (overview[0]["archive_id"] if overview else None)
        measures = reads.drift_measures(cur, chosen) if chosen else []
    return _page(
        request,
        "drift.html",
        client,
        overview=overview,
        chosen=chosen,
        measures=measures,
        settings=_state(request).settings,
    )


def login_redirect(request: Request, error: LoginRequired) -> RedirectResponse:
    """Where a page asked for without a session goes: the login form, then back."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={_quote(target)}", status_code=303)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def picture_data(png_base64: str | None) -> str | None:
    return f"data:image/png;base64,{png_base64}" if png_base64 else None


templates.env.globals["picture"] = picture_data
