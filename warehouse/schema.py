"""The warehouse's tables as code: Arrow schemas, keys, and what each column means.

Every table is stored as Parquet files, one file per archive and import, and read
through a view that shows only each archive's committed import (see warehouse.store).
Each table therefore carries ``archive_id`` and ``import_id``; its key is given
without ``import_id``, because the views show one import per archive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

import pyarrow as pa

# Bump when a table's columns change: the catalogue's views are rebuilt then.
SCHEMA_VERSION = 7


def col(name: str, dtype: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, dtype, nullable=nullable, metadata={"doc": doc})


ARCHIVE_ID = col("archive_id", pa.string(), "The archive (recording or dataset) the row came from.")
IMPORT_ID = col("import_id", pa.string(), "The import that wrote the row; one is committed.")
TIMESTAMP = pa.timestamp("us", tz="UTC")


def _bbox(prefix: str = "") -> list[pa.Field]:
    what = "0-based pixel index, inclusive"
    return [
        col(f"{prefix}x_min", pa.int32(), f"Box left column ({what}).", nullable=True),
        col(f"{prefix}y_min", pa.int32(), f"Box top row ({what}).", nullable=True),
        col(f"{prefix}x_max", pa.int32(), f"Box right column ({what}).", nullable=True),
        col(f"{prefix}y_max", pa.int32(), f"Box bottom row ({what}).", nullable=True),
    ]


@dataclass(frozen=True)
class TableSpec:
    """One warehouse table: its schema, its key and the tables its rows point to."""

    name: str
    description: str
    schema: pa.Schema
    key: tuple[str, ...]
    # column(s) here -> (table, column(s) there): every value must exist there.
    references: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # file paths: stored relative to the home when inside it (so a home can be moved or
    # copied whole), shown absolute by the views, which are rebuilt for a moved home
    home_paths: tuple[str, ...] = ()

    @property
    def not_null(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema if not f.nullable)

    def empty(self) -> pa.Table:
        return self.schema.empty_table()


ARCHIVES = TableSpec(
    name="archives",
    description=(
        "One row per archive steelsight has taken in: a labelled dataset, a camera "
        "recording. Its import_id is the committed import of the archive's rows."
    ),
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col(
                "kind",
                pa.string(),
                "severstal or neu-det (datasets); video or frames (inspection "
                "recordings); marking-station (sheet references); unknown (quarantined "
                "before its kind was known).",
            ),
            col(
                "path",
                pa.string(),
                "Absolute path the archive is read from (stored relative to STEELSIGHT_HOME "
                "when inside it: the views show it in the home they were built for).",
            ),
            col("content_sha256", pa.string(), "Hash over the archive's files and their hashes."),
            col(
                "status",
                pa.string(),
                "ok, partial (some rows rejected), failed (nothing taken) or quarantined "
                "(moved to the quarantine folder; the reason is in ingest_errors).",
            ),
            col("n_images", pa.int32(), "Images or frames taken in."),
            col("n_labels", pa.int32(), "Labels taken in."),
            col("n_errors", pa.int32(), "Rows in ingest_errors for this import."),
            col("imported_at", TIMESTAMP, "When this import was committed (UTC)."),
            col("steelsight_version", pa.string(), "Version of steelsight that wrote it."),
            col(
                "received_from",
                pa.string(),
                "Where ingest found it (a landing folder path) when it was moved from there.",
                nullable=True,
            ),
            col(
                "inspected_with",
                pa.string(),
                "Model versions of the committed inspection (JSON); null: not inspected.",
                nullable=True,
            ),
            col(
                "line_id",
                pa.string(),
                "The rolling line, from a recording's manifest; null for datasets.",
                nullable=True,
            ),
            col(
                "camera_id",
                pa.string(),
                "The camera that recorded it, from the manifest; null for datasets.",
                nullable=True,
            ),
            col(
                "mm_per_px",
                pa.float64(),
                "Millimetres per pixel of a recording (manifest); null for datasets.",
                nullable=True,
            ),
            col(
                "frame_width",
                pa.int32(),
                "Frame width in pixels of a recording (manifest); null for datasets.",
                nullable=True,
            ),
            col(
                "frame_height",
                pa.int32(),
                "Frame height in pixels of a recording (manifest); null for datasets.",
                nullable=True,
            ),
            col(
                "landed_signature",
                pa.string(),
                "Set on an archive ingest could not move out of the landing folder: a digest "
                "of its files' names, sizes and times and of the landing folder's "
                "permissions. Later runs skip it while this is unchanged.",
                nullable=True,
            ),
        ]
    ),
    key=("archive_id",),
    home_paths=("path",),
)

IMAGES = TableSpec(
    name="images",
    description="One row per readable image of an archive, labelled or not.",
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col("image_id", pa.string(), "File name of the image, as the labels name it."),
            col(
                "path",
                pa.string(),
                "Absolute path of the image file (stored relative to STEELSIGHT_HOME when "
                "inside it, as archives.path).",
            ),
            col("width", pa.int32(), "Width in pixels."),
            col("height", pa.int32(), "Height in pixels."),
            col("channels", pa.int8(), "Colour channels stored in the file (1 or 3)."),
            col("sha256", pa.string(), "SHA-256 of the file's bytes."),
        ]
    ),
    key=("archive_id", "image_id"),
    references={("archive_id",): ("archives", ("archive_id",))},
    home_paths=("path",),
)

LABELS = TableSpec(
    name="labels",
    description=(
        "Ground truth: one row per mask (Severstal, RLE per image and class) or box "
        "(NEU-DET, Pascal VOC), with its area and bounding box."
    ),
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col("image_id", pa.string(), "The image the label belongs to."),
            col("label_index", pa.int32(), "Position of the label within its image (0-based)."),
            col("class_id", pa.int16(), "Class number in the dataset's class list."),
            col("class_name", pa.string(), "Class name in the plant's words."),
            col("geometry", pa.string(), "mask (rle holds it) or box (the box is the label)."),
            col(
                "rle",
                pa.string(),
                "Severstal RLE: column-major, 1-indexed start/length pairs.",
                nullable=True,
            ),
            col("area", pa.int64(), "Labelled pixels (a box's whole area for boxes)."),
            *_bbox(),
            col("source_row", pa.int64(), "Row (CSV, 1 = header) or object index (XML)."),
        ]
    ),
    key=("archive_id", "image_id", "label_index"),
    references={
        ("archive_id", "image_id"): ("images", ("archive_id", "image_id")),
    },
)

FRAMES = TableSpec(
    name="frames",
    description=(
        "One row per inspected frame of a recording: where it lies along the line, which "
        "sheet it shows, and what the models found on it."
    ),
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col("frame_id", pa.string(), "The frame, as the recording's frame index names it."),
            col("frame_number", pa.int64(), "Frame number in the recording (gaps: dropped)."),
            col("captured_at", TIMESTAMP, "When the camera took it (UTC).", nullable=True),
            col("first_line", pa.int64(), "Recording scan line of the frame's first row."),
            col(
                "sheet_index",
                pa.int32(),
                "The sheet covering most of the frame; null: only the roller table.",
                nullable=True,
            ),
            col("steel_rows", pa.int32(), "Rows of the frame that show steel."),
            col("n_markings", pa.int32(), "Markings the detector found on the frame."),
            col("n_defects", pa.int32(), "Defects found on the frame."),
            col("defect_pixels", pa.int64(), "Pixels of the frame inside a defect."),
            col("gate", pa.list_(pa.float32()), "Gate probability per defect class, in order."),
            col(
                "mean_level",
                pa.float32(),
                "Mean grey level of the frame (0-255): what the camera's light gave.",
                nullable=True,
            ),
            col("model_versions", pa.string(), "Models that produced the row (JSON)."),
        ]
    ),
    key=("archive_id", "frame_id"),
    references={("archive_id",): ("archives", ("archive_id",))},
)

DEFECTS = TableSpec(
    name="defects",
    description=(
        "Model predictions: one row per defect found on a frame (connected region of "
        "one class), with its mask, size, position on the sheet and score. A defect "
        "crossing a frame boundary is one row per frame."
    ),
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col("frame_id", pa.string(), "The frame (or image) the defect was found on."),
            col("defect_index", pa.int32(), "Position of the defect within its frame."),
            col(
                "sheet_index",
                pa.int32(),
                "The sheet it lies on (sheets.sheet_index); null: not on a sheet.",
                nullable=True,
            ),
            col("sheet_id", pa.string(), "The sheet's identified ID, when known.", nullable=True),
            col("class_id", pa.int16(), "Predicted class number."),
            col("class_name", pa.string(), "Predicted class name."),
            col("rle", pa.string(), "Severstal RLE of the defect's mask in its frame."),
            col("area", pa.int64(), "Defect pixels."),
            col("area_mm2", pa.float64(), "Defect area in square millimetres."),
            *_bbox(),
            col("x_mm", pa.float64(), "Position along the sheet, mm from its head.", nullable=True),
            col(
                "y_mm", pa.float64(), "Position across the sheet, mm from its edge.", nullable=True
            ),
            col("score", pa.float32(), "Mean pixel probability inside the defect, in [0, 1]."),
            col("model_version", pa.string(), "Registered model version that predicted it."),
        ]
    ),
    key=("archive_id", "frame_id", "defect_index"),
    references={
        ("archive_id", "frame_id"): ("frames", ("archive_id", "frame_id")),
    },
)

SHEETS = TableSpec(
    name="sheets",
    description=(
        "One row per sheet seen in a recording, found from the frames themselves: who it "
        "is (from its marking imprint), where it was seen, and a summary of its defects "
        "with a grade."
    ),
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col("sheet_index", pa.int32(), "Order of the sheet within the recording."),
            col("sheet_id", pa.string(), "Identified sheet ID, or 'unknown'."),
            col(
                "similarity",
                pa.float32(),
                "Verified correlation of the steel around the sheet's marking with the "
                "nearest registered sheet's (about 0 for another sheet); the best of its "
                "markings; null: no marking found or none could be verified.",
                nullable=True,
            ),
            col(
                "nearest_sheet_id",
                pa.string(),
                "Nearest registered sheet, also when below the threshold.",
                nullable=True,
            ),
            col("first_frame", pa.int64(), "First frame number showing the sheet."),
            col("last_frame", pa.int64(), "Last frame number showing the sheet."),
            col("first_line", pa.int64(), "Recording scan line of the sheet's head."),
            col("last_line", pa.int64(), "Recording scan line of the sheet's tail."),
            col("complete", pa.bool_(), "Head and tail both inside the recording."),
            col("length_mm", pa.float64(), "Measured length.", nullable=True),
            col("width_mm", pa.float64(), "Measured width.", nullable=True),
            col("n_markings", pa.int32(), "Marking detections on the sheet."),
            col(
                "markings_agreeing",
                pa.int32(),
                "Of its marking detections, those verified as the sheet's ID (0 when unknown).",
                nullable=True,
            ),
            col("n_defects", pa.int32(), "Defects found on the sheet."),
            col(
                "defect_counts",
                pa.map_(pa.string(), pa.int32()),
                "Defects per class name (classes without defects are absent).",
            ),
            col(
                "defect_areas_mm2",
                pa.map_(pa.string(), pa.float64()),
                "Defect area per class name, mm².",
            ),
            col("defect_area_ratio", pa.float64(), "Defect pixels / sheet pixels."),
            col("grade", pa.string(), "Grade from the configured rules."),
            col("model_versions", pa.string(), "Models that produced the row (JSON)."),
        ]
    ),
    key=("archive_id", "sheet_index"),
    references={("archive_id",): ("archives", ("archive_id",))},
)

SHEET_REFERENCES = TableSpec(
    name="sheet_references",
    description=(
        "The reference registry for identification: one row per marking box of each sheet "
        "the marking station photographed (the detector's best; its next ones too when it "
        "was unsure of the best), with its L2 sheet ID, the surface imprint of the steel "
        "around the box and the embedding of its paint. Inspection finds the nearest rows "
        "and verifies them by aligned correlation of the surface."
    ),
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col("sheet_id", pa.string(), "The sheet's ID from the L2 system (sheets.csv)."),
            col("frame_id", pa.string(), "The station picture the imprint was taken from."),
            col("captured_at", TIMESTAMP, "When the station took the picture (UTC)."),
            *_bbox(),
            col("detection_score", pa.float32(), "Marking detector confidence."),
            col(
                "box_rank",
                pa.int16(),
                "Which of the picture's references: 0 the detector's best box; after it "
                "the same box turned level by a second angle where the text's angle was in "
                "doubt (surface_angle; models.identity.surface.text_angles), and its next "
                "boxes when it scored under 0.7 (models.identity.pipeline.STATION_SURE). "
                "Null: registered before ranks.",
                nullable=True,
            ),
            col(
                "embedding",
                pa.list_(pa.float32()),
                "L2-normalised imprint embedding; cosine similarity is a dot product.",
            ),
            col(
                "surface_format",
                pa.string(),
                "Layout of the surface imprint (models.identity.surface.FORMAT); rows of "
                "another layout are not searched: register the station again.",
                nullable=True,
            ),
            col("surface_angle", pa.float32(), "Degrees the text was turned level.", nullable=True),
            col(
                "surface_descriptor",
                pa.list_(pa.float32()),
                "Band-passed steel around the marking, paint masked, one L2-normalised "
                "descriptor per turn, flattened.",
                nullable=True,
            ),
            col(
                "surface_template",
                pa.binary(),
                "The verification template: float16 bytes, its shape in surface_format.",
                nullable=True,
            ),
            col("model_version", pa.string(), "steelsight-imprint version that embedded it."),
            col("detector_version", pa.string(), "steelsight-marking version that found it."),
        ]
    ),
    key=("archive_id", "sheet_id", "box_rank"),
    references={("archive_id",): ("archives", ("archive_id",))},
)

DRIFT = TableSpec(
    name="drift",
    description=(
        "Per inspected recording, what the models saw compared with what they were "
        "validated on (core.drift): one row per measure and class (or 'sheets')."
    ),
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col(
                "measure",
                pa.string(),
                "gate_psi (population stability index of the class's gate probabilities "
                "against the champion's holdout), defect_share (share of frames with a defect "
                "of the class), unknown_share (share of sheets not identified), "
                "identified_similarity (median verified similarity of identified sheets).",
            ),
            col("subject", pa.string(), "The class the measure is of, or 'sheets'."),
            col(
                "value",
                pa.float64(),
                "The archive's value; null: nothing to measure.",
                nullable=True,
            ),
            col(
                "reference",
                pa.float64(),
                "The holdout's value where there is one (gate_psi: 0).",
                nullable=True,
            ),
            col(
                "threshold",
                pa.float64(),
                "Settings' threshold above which the measure flags the archive; null: reported "
                "only.",
                nullable=True,
            ),
            col("drifted", pa.bool_(), "The value is above the threshold."),
            col("samples", pa.int64(), "Frames or sheets the value is of."),
            col("model_version", pa.string(), "The segmenter whose holdout is the reference."),
        ]
    ),
    key=("archive_id", "measure", "subject"),
    references={("archive_id",): ("archives", ("archive_id",))},
)

INGEST_ERRORS = TableSpec(
    name="ingest_errors",
    description=(
        "Everything that could not be taken in, with where it was and what to do: one "
        "row per rejected file or row. Together with the other tables nothing is lost."
    ),
    schema=pa.schema(
        [
            ARCHIVE_ID,
            IMPORT_ID,
            col("error_index", pa.int32(), "Position of the error within its import."),
            col("source", pa.string(), "File the problem is in (absolute path)."),
            col("source_row", pa.int64(), "Row (CSV, 1 = header) or object index.", nullable=True),
            col("field", pa.string(), "Column or element at fault.", nullable=True),
            col("error_kind", pa.string(), "Short machine-readable kind, e.g. invalid_rle."),
            col("reason", pa.string(), "What is wrong and what to do about it."),
        ]
    ),
    key=("archive_id", "error_index"),
    references={("archive_id",): ("archives", ("archive_id",))},
)

# Name -> spec. Read-only: copy a spec (dataclasses.replace) to derive another.
TABLES: MappingProxyType[str, TableSpec] = MappingProxyType(
    {
        t.name: t
        for t in (
            ARCHIVES,
            IMAGES,
            LABELS,
            FRAMES,
            DEFECTS,
            SHEETS,
            SHEET_REFERENCES,
            DRIFT,
            INGEST_ERRORS,
        )
    }
)


def describe_markdown() -> str:
    """docs/warehouse.md: every table with its key, references and columns."""
    lines = [
        "# Warehouse tables",
        "",
        "Generated from `warehouse/schema.py` (`python -m warehouse.schema > docs/warehouse.md`).",
        "Every table is a view over Parquet files that shows each archive's committed import;",
        "`import_id` tells imports apart. The analysts' views at the end are defined in",
        "`warehouse/views.sql`.",
    ]
    for spec in TABLES.values():
        lines += ["", f"## {spec.name}", "", spec.description, "", f"Key: `{', '.join(spec.key)}`."]
        for here, (other, there) in spec.references.items():
            lines.append(f"References: `{', '.join(here)}` → `{other}({', '.join(there)})`.")
        lines += ["", "| column | type | null | meaning |", "| --- | --- | --- | --- |"]
        for f in spec.schema:
            doc = f.metadata[b"doc"].decode()
            lines.append(f"| `{f.name}` | {f.type} | {'yes' if f.nullable else 'no'} | {doc} |")
    lines += ["", "## Analysts' views", ""]
    lines += [f"- `{name}`: {about}" for name, about in analyst_views()]
    return "\n".join(lines) + "\n"


def analyst_views() -> list[tuple[str, str]]:
    """(name, the comment above it) of each view in views.sql, in order."""
    sql = resources.files("warehouse").joinpath("views.sql").read_text()
    found, comment = [], []
    for line in sql.splitlines():
        if line.startswith("-- "):
            comment.append(line[3:].strip())
        elif match := re.match(r"CREATE OR REPLACE VIEW (\w+)", line):
            found.append((match.group(1), " ".join(comment)))
            comment = []
        elif not line.strip():
            comment = []
    return found


if __name__ == "__main__":
    print(describe_markdown(), end="")
