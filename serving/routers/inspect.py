"""POST /v1/inspect and /v1/inspect/batch: frames in, defects and sheet identity out."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import numpy as np
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
from serving.openapi import (
    INVALID,
    NO_MODELS,
    OVERLOADED,
    TOO_SLOW,
    UNAUTHORIZED,
    Refusal,
    responses,
)
from serving.schemas import BatchOut, InspectOut
from serving.security import require_key
from serving.state import ServerState

router = APIRouter(tags=["inspection"])
# the optional file parts of /v1/inspect beside `frame`: the frames around it on the line
NEIGHBOURS = ("previous", "next")

_ONE_FRAME_BODY = {
    "requestBody": {
        "required": True,
        "description": "One frame: the JPEG or PNG bytes as the body, or a multipart form "
        "with the frame as its file part `frame` and, optionally, the frames just before "
        "and after it on the line as `previous` and `next` (the same size). With them a "
        "marking is identified as the inspect job identifies it: the steel around it "
        "across the frame's edge, and the rest of a marking the edge cut. Only `frame` is "
        "inspected for defects.",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "frame": {"type": "string", "format": "binary"},
                        "previous": {"type": "string", "format": "binary"},
                        "next": {"type": "string", "format": "binary"},
                    },
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
# what a frame can be refused for, in either route
_FRAME_REFUSALS = (
    UNAUTHORIZED,
    Refusal(400, "empty_body", "body is empty: send the frame's JPEG or PNG bytes", "body"),
    Refusal(
        400,
        "invalid_multipart",
        "the multipart body cannot be read: Did not find boundary character",
        "body",
    ),
    Refusal(400, "no_frame", "the multipart body has no file part: send the frame as a file"),
    TOO_SLOW,
    Refusal(
        413,
        "body_too_large",
        "the body is more than the 8388608 bytes allowed (max_image_bytes)",
        "body",
    ),
    Refusal(
        413,
        "image_too_large",
        "body has 20000x20000 pixels, more than the 16000000 allowed (max_image_pixels)",
        "body",
    ),
    Refusal(
        415,
        "unsupported_media_type",
        "body is text/plain: send image/jpeg or image/png, or a multipart form",
        "body",
    ),
    Refusal(415, "unsupported_pixel_format", "body: pixel mode CMYK is not supported", "body"),
    INVALID,
    Refusal(
        422,
        "not_an_image",
        "body is not a JPEG or PNG image (its first bytes are 47 49 46 38 39 61 01 00)",
        "body",
    ),
    Refusal(
        422,
        "undecodable_image",
        "body: the image header cannot be read: send an unbroken JPEG or PNG",
        "body",
    ),
    Refusal(
        422,
        "truncated_image",
        "body: the JPEG image (1600x256) ends before its last pixel: the file is truncated, "
        "send it again whole",
        "body",
    ),
    NO_MODELS,
    OVERLOADED,
)
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


async def _file_parts(
    request: Request, limits: Limits, most: int, too_many: str
) -> list[tuple[str, str, bytes]]:
    """(field, name, bytes) of every file part of a multipart body, in order; ``name``
    says which part it is in messages. ``too_many``: what to do when there are more than
    ``most``."""
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
                f"more than {most} file parts in one request: {too_many}",
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
        parts.append((key, name, await value.read()))
    await form.close()
    if not parts:
        raise ApiError(
            400, "no_frame", "the multipart body has no file part: send the frame as a file", "body"
        )
    return parts


async def submit(state: ServerState, jobs: list[FrameJob]) -> list[FrameAnswer]:
    """The answers of the served models to ``jobs``, through the micro-batcher; 503 when
    no models are loaded or the queue is full. Counted in the metrics."""
    if state.champions.current is None:
        raise ApiError(503, "no_models", f"no models loaded: {state.champions.problem}")
    try:
        answers = await state.batcher.submit(jobs)
    except Overloaded as error:
        state.metrics.rejected.inc(len(jobs))
        raise ApiError(
            503, "overloaded", str(error), None, {"Retry-After": str(error.retry_after_s)}
        ) from None
    except NoChampion as error:
        raise ApiError(503, "no_models", str(error)) from None
    state.metrics.answered(answers)
    return answers


def _multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


@router.post(
    "/v1/inspect",
    response_model=InspectOut,
    summary="Inspect one frame: defects per class, gate probabilities, sheet identity.",
    openapi_extra=_ONE_FRAME_BODY,
    responses=responses(
        *_FRAME_REFUSALS,
        Refusal(
            400,
            "neighbour_shape",
            "file part previous (a.png) is 800x256 but the frame is 1600x256: `previous` must "
            "be the line camera's frame just beside it, of the same size",
            "previous",
        ),
        Refusal(
            413,
            "too_many_frames",
            "more than 3 file parts in one request: send one frame, with at most the frames "
            "before and after it",
            "body",
        ),
    ),
)
async def inspect_frame(
    request: Request, _client: Client, overlay: Overlay = False
) -> JSONResponse:
    state: ServerState = request.app.state.server
    if _multipart(request):
        job = await _job_of_parts(
            await _file_parts(
                request,
                state.limits,
                1 + len(NEIGHBOURS),
                "send one frame, with at most the frames before and after it "
                "(`previous`, `next`); several frames: POST /v1/inspect/batch",
            ),
            state,
            overlay,
        )
    else:
        check_media_type(request.headers.get("content-type"))
        data = await _read_body(request, state.limits)
        job = FrameJob(await run_in_threadpool(decode_frame, data, state.limits, "body"), overlay)
    request.state.frames = 1
    answers = await submit(state, [job])
    return JSONResponse(_answer(answers[0]))


async def _job_of_parts(
    parts: list[tuple[str, str, bytes]], state: ServerState, overlay: bool
) -> FrameJob:
    """The frame of a one-frame multipart body, with its neighbours when sent: one file
    part (whatever its field), or the parts `frame`, `previous` and `next`."""
    if len(parts) == 1:
        (_, name, data), neighbours = parts[0], {}
    else:
        fields = [field for field, _, _ in parts]
        unknown = [name for field, name, _ in parts if field not in ("frame", *NEIGHBOURS)]
        if unknown or "frame" not in fields or len(set(fields)) < len(fields):
            raise ApiError(
                400,
                "invalid_multipart",
                f"the file parts are {', '.join(name for _, name, _ in parts)}: send the frame "
                "as the part `frame`, and the frames just before and after it on the line as "
                "`previous` and `next` (each at most once)",
                "body",
            )
        name, data = next((n, d) for f, n, d in parts if f == "frame")
        neighbours = {f: (n, d) for f, n, d in parts if f in NEIGHBOURS}
    frame = await run_in_threadpool(decode_frame, data, state.limits, f"file part {name}")
    beside: dict[str, np.ndarray] = {}
    for field, (name, data) in neighbours.items():
        picture = await run_in_threadpool(decode_frame, data, state.limits, f"file part {name}")
        if picture.shape != frame.shape:
            raise ApiError(
                400,
                "neighbour_shape",
                f"file part {name} is {picture.shape[1]}x{picture.shape[0]} but the frame is "
                f"{frame.shape[1]}x{frame.shape[0]}: `{field}` must be the line camera's frame "
                "just beside it, of the same size",
                field,
            )
        beside[field] = picture
    return FrameJob(frame, overlay, beside.get("previous"), beside.get("next"))


@router.post(
    "/v1/inspect/batch",
    response_model=BatchOut,
    summary="Inspect several frames (multipart, one file part each); one result or error "
    "per frame, in order.",
    openapi_extra=_BATCH_BODY,
    responses=responses(
        *_FRAME_REFUSALS,
        Refusal(
            413,
            "too_many_frames",
            "more than 64 file parts in one request: split the batch (max_batch_frames)",
            "body",
        ),
    ),
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
    parts = await _file_parts(request, state.limits, most, "split the batch (max_batch_frames)")
    items: list[dict] = []
    jobs: list[FrameJob] = []
    for _, name, data in parts:  # a bad frame gets its error; the others are inspected
        try:
            frame = await run_in_threadpool(decode_frame, data, state.limits, f"file part {name}")
        except ApiError as error:
            items.append({"name": name, "result": None, "error": _error(error)})
            continue
        items.append({"name": name, "result": len(jobs), "error": None})
        jobs.append(FrameJob(frame, overlay))
    request.state.frames = len(jobs)
    answers = await submit(state, jobs) if jobs else []
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
