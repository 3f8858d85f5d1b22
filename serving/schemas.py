"""What the API answers, as pydantic models (they also write the OpenAPI docs at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class DefectOut(BaseModel):
    class_id: int = Field(description="Severstal class number.")
    class_name: str
    rle: str = Field(description="Severstal RLE of the region's mask (column-major, 1-based).")
    area: int = Field(description="Pixels in the region.")
    bbox: list[int] = Field(description="x_min, y_min, x_max, y_max (inclusive pixels).")
    score: float = Field(description="Mean pixel probability inside the region.")


class MarkingOut(BaseModel):
    bbox: list[float] = Field(
        description="x_min, y_min, x_max, y_max of the marking, in the frame's pixels. A "
        "marking the seam with the previous frame cuts, found whole across it, starts "
        "above the frame (y_min < 0); a part the frame's edge cut is joined with the rest "
        "for identification but boxed as the frame shows it."
    )
    score: float = Field(description="Detector confidence.")
    sheet_id: str = Field(description="Registered sheet, or 'unknown' below the threshold.")
    nearest_sheet_id: str | None = Field(
        description="The best verified registered sheet, at any similarity."
    )
    similarity: float | None = Field(
        description="Verified correlation of the steel around the marking with that sheet's "
        "(about 0 for another sheet); null: none registered, or too little steel in the "
        "frame around the marking to verify."
    )


class IdentityOut(BaseModel):
    status: Literal["identified", "unknown", "no_marking", "not_served"] = Field(
        description="identified: similarity at or above the threshold; unknown: below it; "
        "no_marking: no marking visible; not_served: no identity models registered."
    )
    sheet_id: str | None = None
    nearest_sheet_id: str | None = None
    similarity: float | None = None
    threshold: float | None = None
    bbox: list[float] | None = None


class InspectOut(BaseModel):
    width: int
    height: int
    defects: list[DefectOut]
    gate: dict[str, float] = Field(description="Gate probability per defect class.")
    identity: IdentityOut
    markings: list[MarkingOut]
    models: dict[str, str] = Field(description="Model versions that answered, per kind.")
    overlay_png: str | None = Field(
        None, description="With ?overlay=true: the frame with the masks drawn, base64 PNG."
    )


class ErrorOut(BaseModel):
    status: int
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx and 5xx the API sends: ``code`` is stable for programs, ``message`` is for
    the person reading the log, ``field`` names the parameter, header or part at fault."""

    error: ErrorOut


class BatchItemOut(BaseModel):
    name: str = Field(description="The file part: form field (file name).")
    result: InspectOut | None = Field(description="The answer; null when the frame was refused.")
    error: ErrorOut | None = Field(description="Why the frame was refused (4xx), if it was.")


class BatchOut(BaseModel):
    results: list[BatchItemOut] = Field(description="One item per file part, in the order sent.")


class ServedModelOut(BaseModel):
    kind: str
    version: str


class ModelsOut(BaseModel):
    served: list[ServedModelOut]
    loaded_at: str | None
    checked_at: str | None = Field(description="When the registry was last looked at.")
    registered_sheets: int = Field(description="Sheets the identity models can recognise.")
    imprint_threshold: float | None = Field(
        description="Verified correlation at which a sheet is named (settings: identity_threshold)."
    )
    problem: str | None = Field(description="Why the registry's champions are not served, if so.")


class SheetDefectOut(BaseModel):
    frame_id: str
    defect_index: int
    class_id: int
    class_name: str
    rle: str
    area: int
    area_mm2: float
    bbox: list[int | None]
    x_mm: float | None = Field(description="Along the sheet, from its head.")
    y_mm: float | None = Field(description="Across the sheet, from its edge.")
    score: float


class SheetOut(BaseModel):
    sheet_id: str = Field(description="Identified sheet ID, or 'unknown'.")
    archive_id: str = Field(description="The recording the sheet was seen in.")
    sheet_index: int = Field(description="Order of the sheet within that recording.")
    seen_at: datetime | None = Field(description="When its head passed the camera (UTC).")
    line_id: str | None = Field(None, description="The line that recorded it (manifest).")
    camera_id: str | None = Field(None, description="The camera that recorded it (manifest).")
    grade: str
    similarity: float | None
    nearest_sheet_id: str | None
    complete: bool
    length_mm: float | None
    width_mm: float | None
    n_defects: int
    defect_counts: dict[str, int]
    defect_areas_mm2: dict[str, float]
    defect_area_ratio: float
    model_versions: dict[str, str]


class SheetDetailOut(SheetOut):
    passes: int = Field(description="How many times the sheet was seen; this is the latest.")
    defects: list[SheetDefectOut]


class SheetListOut(BaseModel):
    sheets: list[SheetOut]
    limit: int
    offset: int
