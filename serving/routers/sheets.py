"""GET /v1/sheets and /v1/sheets/{sheet_id}: the sheets the line saw, from the warehouse."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from serving.errors import ApiError
from serving.openapi import INVALID, NO_WAREHOUSE, UNAUTHORIZED, Refusal, responses
from serving.schemas import SheetDetailOut, SheetListOut
from serving.security import require_key
from serving.state import ServerState
from warehouse import reads

router = APIRouter(tags=["sheets"])


def _utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC, as the warehouse stores times."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get(
    "/v1/sheets",
    response_model=SheetListOut,
    summary="Sheets seen on the line, newest first, by time window, grade, line and identity.",
    responses=responses(
        UNAUTHORIZED,
        INVALID,
        Refusal(
            422,
            "empty_window",
            "until (2026-12-01 06:00:00+00:00) is not after since (2026-12-01 14:00:00+00:00)",
            "until",
        ),
        NO_WAREHOUSE,
    ),
)
def list_sheets(
    request: Request,
    _client: Annotated[str, Depends(require_key)],
    since: Annotated[
        datetime | None, Query(description="Seen at or after (ISO 8601; UTC if no zone).")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Seen before (ISO 8601; UTC if no zone).")
    ] = None,
    grade: Annotated[str | None, Query(max_length=32, description="Only this grade.")] = None,
    line: Annotated[
        str | None, Query(max_length=128, description="Only sheets of this line (line_id).")
    ] = None,
    identified: Annotated[
        bool | None,
        Query(description="true: only identified sheets; false: only those answered unknown."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> SheetListOut:
    state: ServerState = request.app.state.server
    since, until = _utc(since), _utc(until)
    if since and until and until <= since:
        raise ApiError(
            422, "empty_window", f"until ({until}) is not after since ({since})", "until"
        )
    with state.cursor() as cur:
        rows = reads.sheet_passes(
            cur, since, until, grade, limit, offset, identified=identified, line_id=line
        )
    return SheetListOut(sheets=rows, limit=limit, offset=offset)


@router.get(
    "/v1/sheets/{sheet_id}",
    response_model=SheetDetailOut,
    summary="One identified sheet: its latest pass, grade, defect summary and defects.",
    responses=responses(
        UNAUTHORIZED,
        Refusal(
            404,
            "sheet_not_found",
            "no sheet 'L2-000123' in the warehouse: it has not been identified on the line "
            "(GET /v1/sheets lists the sheets seen)",
            "sheet_id",
        ),
        INVALID,
        NO_WAREHOUSE,
    ),
)
def get_sheet(
    request: Request,
    sheet_id: Annotated[str, Path(min_length=1, max_length=128)],
    _client: Annotated[str, Depends(require_key)],
) -> SheetDetailOut:
    state: ServerState = request.app.state.server
    if sheet_id == "unknown":
        raise ApiError(
            404,
            "sheet_not_found",
            "'unknown' is not a sheet ID: sheets the line could not identify are listed by "
            "GET /v1/sheets",
            "sheet_id",
        )
    with state.cursor() as cur:
        found = reads.latest_pass(cur, sheet_id)
        if found is None:
            raise ApiError(
                404,
                "sheet_not_found",
                f"no sheet {sheet_id!r} in the warehouse: it has not been identified on the "
                "line (GET /v1/sheets lists the sheets seen)",
                "sheet_id",
            )
        sheet, passes = found
        defects = reads.sheet_defects(cur, sheet["archive_id"], sheet["sheet_index"])
    return SheetDetailOut(**sheet, passes=passes, defects=defects)
