"""POST /v1/inspect and /v1/inspect/batch: frames in, defects and sheet identity out."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from models.kinds import NoChampion
from serving.batching import Overloaded
from serving.errors import ApiError
from serving.images import Limits, check_media_type, decode_frame
from serving.inference import FrameAnswer, FrameJob
from serving.schemas import BatchOut, InspectOut
from serving.security import require_key
from serving.state import ServerState

router = APIRouter(tags=["inspection"])

_ONE_FRAME_BODY = {
    "requestBody": {
        "required": True,
        "description": "One frame: the JPEG or PNG bytes as the body, or a multipart form "
        "with one file part.",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"frame": {"type": "string", "format": "binary"}},
                    "required": ["frame"],
                }
            },
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Several frames as file parts of a multipart form, answered in order.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "frames": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                    "required": ["frames"],
                }
            }
        },
    }
}
Overlay = Annotated[
    bool, Query(description="Add the frame with the defect masks drawn (base64 PNG).")
]
Client = Annotated[str, Depends(require_key)]


def _answer(answer: FrameAnswer) -> dict:
    out = asdict(answer)
    out["models"] = out.pop("versions")
    return out


async def _read_body(request: Request, limits: Limits) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise ApiError(
            413,
            "body_too_large",
            f"the body has {declared} bytes, more than the {limits.max_bytes} allowed "
            "(max_image_bytes): send one frame per image",
            "body",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_bytes:
            raise ApiError(
                413,
                "body_too_large",
                f"the body is more than the {limits.max_bytes} bytes allowed (max_image_bytes)",
                "body",
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _file_parts(request: Request, limits: Limits, most: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file part of a multipart body, in order."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes * most + 65536:
        raise ApiError(
            413,
            "body_too_large",
            f"the body has {declared} bytes, more than {most} frames of at most "
            f"{limits.max_bytes} bytes (max_image_bytes)",
            "body",
        )
    try:
        form = await request.form(max_files=most, max_fields=most + 8)
    except (MultiPartException, HTTPException) as error:  # starlette wraps the first
        reason = getattr(error, "message", None) or getattr(error, "detail", str(error))
        if "Too many files" in reason:
            raise ApiError(
                413,
                "too_many_frames",
                f"more than {most} frames in one request (max_batch_frames): split the batch",
                "body",
            ) from None
        raise ApiError(
            400, "invalid_multipart", f"the multipart body cannot be read: {reason}", "body"
        ) from None
    parts = []
    for key, value in form.multi_items():
        if not isinstance(value, UploadFile):
            continue
        name = f"{key} ({value.filename})" if value.filename else key
        check_media_type(value.content_type, f"file part {name}")
        parts.append((name, await value.read()))
    await form.close()
    if not parts:
        raise ApiError(
            400, "no_frame", "the multipart body has no file part: send the frame as a file", "body"
        )
    return parts


async def _submit(state: ServerState, jobs: list[FrameJob]) -> list[FrameAnswer]:
    if state.champions.current is None:
        raise ApiError(503, "no_models", f"no models loaded: {state.champions.problem}")
    try:
        return await state.batcher.submit(jobs)
    except Overloaded as error:
        state.metrics.rejected.inc(len(jobs))
        raise ApiError(
            503, "overloaded", str(error), None, {"Retry-After": str(error.retry_after_s)}
        ) from None
    except NoChampion as error:
        raise ApiError(503, "no_models", str(error)) from None


def _multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


@router.post(
    "/v1/inspect",
    response_model=InspectOut,
    summary="Inspect one frame: defects per class, gate probabilities, sheet identity.",
    openapi_extra=_ONE_FRAME_BODY,
)
async def inspect_frame(
    request: Request, _client: Client, overlay: Overlay = False
) -> JSONResponse:
    state: ServerState = request.app.state.server
    if _multipart(request):
        parts = await _file_parts(request, state.limits, 1)
        field, data = parts[0]
        field = f"file part {field}"
    else:
        check_media_type(request.headers.get("content-type"))
        field, data = "body", await _read_body(request, state.limits)
    frame = await run_in_threadpool(decode_frame, data, state.limits, field)
    request.state.frames = 1
    answers = await _submit(state, [FrameJob(frame, overlay)])
    return JSONResponse(_answer(answers[0]))


@router.post(
    "/v1/inspect/batch",
    response_model=BatchOut,
    summary="Inspect several frames (multipart, one file part each); one result or error "
    "per frame, in order.",
    openapi_extra=_BATCH_BODY,
)
async def inspect_batch(
    request: Request, _client: Client, overlay: Overlay = False
) -> JSONResponse:
    state: ServerState = request.app.state.server
    most = state.settings.max_batch_frames
    if not _multipart(request):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the frames as file parts of multipart/form-data (one frame: POST /v1/inspect)",
            "body",
        )
    parts = await _file_parts(request, state.limits, most)
    items: list[dict] = []
    jobs: list[FrameJob] = []
    for name, data in parts:  # a bad frame gets its error; the others are inspected
        try:
            frame = await run_in_threadpool(decode_frame, data, state.limits, f"file part {name}")
        except ApiError as error:
            items.append({"name": name, "result": None, "error": _error(error)})
            continue
        items.append({"name": name, "result": len(jobs), "error": None})
        jobs.append(FrameJob(frame, overlay))
    request.state.frames = len(jobs)
    answers = await _submit(state, jobs) if jobs else []
    for item in items:
        if item["result"] is not None:
            item["result"] = _answer(answers[item["result"]])
    return JSONResponse({"results": items})


def _error(error: ApiError) -> dict:
    return {
        "status": error.status,
        "code": error.code,
        "message": error.message,
        "field": error.field,
    }
