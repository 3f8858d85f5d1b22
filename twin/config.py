"""The twin's parameters: every key typed and explained; unknown keys are rejected.

A YAML or JSON file with any subset of these keys can be passed to
``steelsight simulate --config FILE``; the rest keep their defaults.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

TWIN_VERSION = "1"


class Fault(StrEnum):
    """Recorder faults the twin can write on request, for reliability tests."""

    truncated_video = "truncated-video"  # the video file ends early (bytes cut off)
    corrupt_frame = "corrupt-frame"  # one frame's bytes are overwritten with garbage
    dropped_frames = "dropped-frames"  # a run of frames was never recorded (index gap)
    missing_manifest = "missing-manifest"  # no manifest.json
    invalid_manifest = "invalid-manifest"  # manifest.json is not valid JSON


class Range(BaseModel):
    """A closed interval that a value is drawn from, uniformly, per sheet."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"range high {self.high} is below low {self.low}")
        return self


class TwinConfig(BaseModel):
    """The rolling line, its cameras, its sheets and what can go wrong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- the line and the inspection camera (a line-scan camera across the width) --
    line_id: str = Field("line-1", description="Line name written into manifests.")
    frame_width: int = Field(1600, ge=64, description="Pixels across the line per frame.")
    frame_height: int = Field(
        256, ge=16, description="Scan lines per frame, along the rolling direction."
    )
    mm_per_px: float = Field(1.0, gt=0, description="Millimetres per pixel, both directions.")
    line_speed_m_s: float = Field(2.0, gt=0, description="Speed of the roller table, m/s.")
    frame_rate_hz: float | None = Field(
        None,
        gt=0,
        description="Frames per second. Default: speed / frame length, so frames tile the "
        "line exactly; faster overlaps frames, slower leaves unseen strips between them.",
    )
    start_time: str = Field(
        "2026-01-05T06:00:00+00:00", description="Recording start (ISO 8601), in manifests."
    )
    # -- the sheets --
    sheet_length_mm: Range = Field(Range(low=2000, high=3200), description="Sheet length.")
    sheet_width_mm: Range = Field(Range(low=1300, high=1500), description="Sheet width.")
    gap_mm: Range = Field(Range(low=250, high=600), description="Empty table between sheets.")
    lateral_jitter_mm: float = Field(
        40, ge=0, description="Sideways offset of a sheet from the line's centre, at most."
    )
    # -- defects: expected frames showing each class (Severstal's train set by default) --
    class_rates: dict[int, float] = Field(
        {1: 0.071, 2: 0.020, 3: 0.410, 4: 0.064},
        description="Per class 1..4: the share of sheet length (in frame lengths) that "
        "shows the class. Severstal: 7.1 %, 2.0 %, 41 %, 6.4 % of images.",
    )
    # -- the marking and the marking station --
    distortion: float = Field(
        0.5,
        ge=0,
        le=1,
        description="How hard each pass treats the marking: wiping, blur, lighting, "
        "contrast, noise. 0 clean, 0.5 moderate, 1 strong.",
    )
    exposure: float = Field(
        1.0,
        gt=0,
        le=4,
        description="The inspection camera's exposure relative to the line's usual (1: as "
        "the models were trained): a lamp ageing or a changed camera setting darkens (<1) "
        "or brightens (>1) every frame. For drift tests; the station camera keeps 1.",
    )
    surface_effects: float = Field(
        0,
        ge=0,
        le=1,
        description="Real steel's non-defects, none of them labelled (core.steel_look): "
        "the chance of oil and water stains on a sheet, of a cluster of bright splashes per "
        "frame length of sheet, and of light far less even than the camera's usual in a "
        "frame. 0 renders the twin as before; the models' hidden holdouts use 0.",
    )
    defect_look: str = Field(
        "twin",
        pattern="^(twin|severstal)$",
        description="How defects are drawn and labelled. twin (the default; the models' "
        "hidden holdouts use it): each defect a hard mask, labelled exactly where the picture "
        "changes, scratches single lines. severstal: as Severstal's real defects look and "
        "are labelled (twin.surface): outlines drawn around them with a margin, scratches "
        "as bands of fine streaks, sized after real Severstal masks.",
    )
    station_width: int = Field(640, ge=64, description="Marking station picture width, px.")
    station_height: int = Field(320, ge=64, description="Marking station picture height, px.")
    station_mm_per_px: float = Field(
        1.0, gt=0, description="Marking station resolution; its field must hold the marking."
    )
    # -- the recorder --
    archive_format: str = Field(
        "video",
        pattern="^(video|frames)$",
        description="video: one lossless FFV1 .mkv per recording; frames: a JPEG per frame.",
    )
    jpeg_quality: int = Field(95, ge=50, le=100, description="JPEG quality for frame folders.")
    faults: tuple[Fault, ...] = Field((), description="Recorder faults to write on request.")

    @model_validator(mode="after")
    def _check_classes(self) -> TwinConfig:
        if set(self.class_rates) - {1, 2, 3, 4}:
            raise ValueError(f"class_rates keys must be 1..4, got {sorted(self.class_rates)}")
        if any(r < 0 for r in self.class_rates.values()):
            raise ValueError("class_rates must not be negative")
        return self

    @property
    def frame_step_px(self) -> float:
        """Scan lines between the starts of two frames."""
        if self.frame_rate_hz is None:
            return float(self.frame_height)
        return self.line_speed_m_s * 1000 / self.frame_rate_hz / self.mm_per_px

    @property
    def fps(self) -> float:
        return self.line_speed_m_s * 1000 / (self.frame_step_px * self.mm_per_px)

    def px(self, mm: float) -> int:
        return max(1, round(mm / self.mm_per_px))
