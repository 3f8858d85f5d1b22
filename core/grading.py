"""Grading a sheet: rules in order, the first whose limits the sheet keeps to gives its grade."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GradeRule(BaseModel):
    """A grade and the limits a sheet must keep to get it (a limit left out: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    grade: str
    max_area_ratio: float | None = Field(None, ge=0, description="Defect pixels / sheet pixels.")
    max_defects: dict[str, int] = Field(
        default_factory=dict, description="Most defects allowed per class name."
    )

    def admits(self, area_ratio: float, counts: dict[str, int]) -> bool:
        if self.max_area_ratio is not None and area_ratio > self.max_area_ratio:
            return False
        return all(counts.get(name, 0) <= limit for name, limit in self.max_defects.items())


DEFAULT_GRADES = (
    GradeRule(grade="A", max_area_ratio=0.0005, max_defects={"patches": 0, "scratches": 2}),
    GradeRule(grade="B", max_area_ratio=0.005),
    GradeRule(grade="C"),
)


def grade(rules: list[GradeRule], area_ratio: float, counts: dict[str, int]) -> str:
    """The first grade whose limits the sheet keeps to; 'ungraded' when none does."""
    return next((r.grade for r in rules if r.admits(area_ratio, counts)), "ungraded")
