"""The rolling line: where the sheets lie, what each camera frame shows, its ground truth.

Every random choice comes from a generator keyed by (seed, purpose, index), so a sheet
or a frame is the same whatever else is rendered: same seed and parameters, same data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.rle import rle_encode
from core.steel_look import light, splashed, stains
from twin.config import TwinConfig
from twin.marking import MarkingLayer, apply_marking, render_marking, sheet_id, wiped
from twin.surface import CLASS_IDS, paint_defects, place_defects, steel_surface

SHEET, FRAME, STATION, LAYOUT, EFFECTS, LIGHT = 1, 2, 3, 4, 5, 6  # purposes of random streams
SPLASH_WINDOW = (960, 720)  # rows, columns: holds a whole cluster (core.steel_look.splashes)


def rng_for(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, index])


@dataclass(frozen=True)
class SheetPlan:
    index: int
    sheet_id: str
    start_px: int  # first scan line of the sheet along the line
    length_px: int
    width_px: int
    left_px: int  # first column of the sheet in the inspection frame


def plan_line(config: TwinConfig, n_sheets: int, seed: int) -> tuple[list[SheetPlan], int]:
    """The sheets along the line, and the scan lines the whole recording covers."""
    rng = rng_for(seed, LAYOUT)
    heat, number = int(rng.integers(100000, 999999)), int(rng.integers(1, 20))
    position = config.px(rng.uniform(config.gap_mm.low, config.gap_mm.high))
    plans = []
    for index in range(n_sheets):
        if number > int(rng.integers(8, 30)):  # a new heat starts
            heat, number = heat + int(rng.integers(1, 4)), 1
        length = config.px(rng.uniform(config.sheet_length_mm.low, config.sheet_length_mm.high))
        width = min(
            config.frame_width - 8,
            config.px(rng.uniform(config.sheet_width_mm.low, config.sheet_width_mm.high)),
        )
        jitter = config.px(config.lateral_jitter_mm) if config.lateral_jitter_mm else 0
        centre = config.frame_width // 2 + int(rng.integers(-jitter, jitter + 1))
        left = int(np.clip(centre - width // 2, 0, config.frame_width - width))
        plans.append(SheetPlan(index, sheet_id(heat, number), position, length, width, left))
        position += length + config.px(rng.uniform(config.gap_mm.low, config.gap_mm.high))
        number += 1
    return plans, position


@dataclass
class Sheet:
    """A sheet as rendered once: its surface, defect masks, marking and the station's view."""

    plan: SheetPlan
    surface: np.ndarray  # float32 (length, width)
    masks: dict[int, np.ndarray]  # class -> bool (length, width)
    marking_box: tuple[int, int, int, int]  # top, left, bottom, right (exclusive), sheet px
    station_view: np.ndarray  # float32, the head as the station sees it, marking fresh
    station_box: tuple[int, int, int, int]  # marking box inside station_view


def render_sheet(config: TwinConfig, plan: SheetPlan, seed: int) -> Sheet:
    rng = rng_for(seed, SHEET, plan.index)
    shape = (plan.length_px, plan.width_px)
    surface = steel_surface(rng, shape)
    defects = place_defects(rng, shape, config.class_rates, config.frame_height, config.defect_look)
    masks = paint_defects(surface, defects)
    if config.surface_effects:
        _surface_effects(config, surface, masks, rng_for(seed, EFFECTS, plan.index))

    layer = render_marking(rng, plan.sheet_id, config.px(rng.uniform(30, 50)))
    mh, mw = layer.alpha.shape
    top = min(config.px(rng.uniform(60, 220)), plan.length_px - mh - 1)
    left = min(config.px(rng.uniform(60, 400)), plan.width_px - mw - 1)
    box = (top, left, top + mh, left + mw)
    station_view, station_box = _station_view(config, surface, layer, box, rng)

    seen = wiped(rng, layer.alpha, 0.05 + 0.4 * config.distortion)
    apply_marking(surface, layer, seen, top, left)
    covered = np.zeros(shape, bool)  # paint hides what lies under it
    covered[top : top + mh, left : left + mw] = seen > 0.3
    for mask in masks.values():
        mask &= ~covered
    return Sheet(plan, surface, masks, box, station_view, station_box)


def _surface_effects(
    config: TwinConfig, surface: np.ndarray, masks: dict[int, np.ndarray], rng: np.random.Generator
) -> None:
    """Stains and splashes drawn on the sheet (in place), so they travel with it from
    frame to frame; splashes keep off the defects and the labels do not change. Drawn
    from their own random stream: a sheet's defects and marking are those it has
    without them."""
    chance = config.surface_effects
    defects = np.logical_or.reduce(list(masks.values()))
    if rng.random() < chance:
        surface *= stains(rng, surface.shape, 1.0)
    h, w = surface.shape
    wh, ww = min(SPLASH_WINDOW[0], h), min(SPLASH_WINDOW[1], w)
    for _ in range(int(rng.poisson(chance * h / config.frame_height))):
        top, left = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
        window = (slice(top, top + wh), slice(left, left + ww))
        surface[window] = splashed(rng, surface[window], defects[window])


def _station_view(
    config: TwinConfig,
    surface: np.ndarray,
    layer: MarkingLayer,
    box: tuple[int, int, int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The marking station's field of view around the fresh marking, in sheet pixels."""
    scale = config.station_mm_per_px / config.mm_per_px
    vh, vw = round(config.station_height * scale), round(config.station_width * scale)
    top, left, bottom, right = box
    if bottom - top > vh * 0.8 or right - left > vw * 0.8:
        raise ValueError(
            f"the marking ({right - left}x{bottom - top} sheet px) does not fit the station's "
            f"{vw}x{vh} field: raise station_mm_per_px or the station picture size"
        )
    cy = (top + bottom) // 2 + int(rng.integers(-vh // 8, vh // 8 + 1))
    cx = (left + right) // 2 + int(rng.integers(-vw // 8, vw // 8 + 1))
    y0, x0 = cy - vh // 2, cx - vw // 2
    pad = max(vh, vw)
    padded = cv2.copyMakeBorder(surface, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    view = padded[y0 + pad : y0 + pad + vh, x0 + pad : x0 + pad + vw].copy()
    fresh = wiped(rng, layer.alpha, 0.02 + 0.15 * config.distortion)
    apply_marking(view, layer, fresh, top - y0, left - x0)
    return view, (top - y0, left - x0, bottom - y0, right - x0)


@dataclass
class Frame:
    """One inspection frame with its ground truth."""

    index: int
    image: np.ndarray  # uint8 (frame_height, frame_width)
    rles: dict[int, str]  # class -> RLE of the frame's mask ("" when absent)
    sheets: list[dict] = field(default_factory=list)  # sheet_id, rows and columns it covers
    markings: list[dict] = field(default_factory=list)  # sheet_id, box, visible fraction
    new_sheets: list[Sheet] = field(default_factory=list)  # sheets first seen in this frame


def background(config: TwinConfig, first_line: int) -> np.ndarray:
    """The empty roller table: dark, with a bright roller every 400 mm along the line."""
    lines = first_line + np.arange(config.frame_height)
    pitch, roller = config.px(400), config.px(90)
    phase = (lines % pitch) / roller
    bars = np.where(phase < 1, 38 * np.sin(np.pi * np.clip(phase, 0, 1)), 0)[:, None]
    across = np.linspace(-1, 1, config.frame_width, dtype=np.float32)[None, :]
    return (14 + bars * (1 - 0.5 * across**2)).astype(np.float32)


def camera(
    config: TwinConfig, image: np.ndarray, rng: np.random.Generator, exposure: float = 1.0
) -> np.ndarray:
    """What the camera adds: gain, uneven light across the width, glare, blur, noise;
    ``exposure`` scales the light (1: unchanged, the same pixels as without it)."""
    d = config.distortion
    h, w = image.shape
    across = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    light = rng.normal(1, 0.05 + 0.12 * d) * (1 - rng.uniform(0.05, 0.3) * across**2)
    if exposure != 1.0:
        light = light * exposure
    image = image * light + rng.normal(0, 4 + 8 * d)
    if rng.random() < 0.1 + 0.2 * d:  # glare from a wet spot or the lamp
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sy, sx = rng.uniform(30, 120), rng.uniform(60, 300)
        yy = ((np.arange(h, dtype=np.float32) - cy) / sy) ** 2
        xx = ((np.arange(w, dtype=np.float32) - cx) / sx) ** 2
        image = image + rng.uniform(30, 90) * np.exp(-(yy[:, None] + xx[None, :]))
    sigma = rng.uniform(0, 0.3 + 1.2 * d)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=0.5, sigmaY=sigma)
    image = image + rng.standard_normal(image.shape, dtype=np.float32) * (1.5 + 4 * d)
    return image.clip(0, 255).astype(np.uint8)


def frames(
    config: TwinConfig, plans: list[SheetPlan], total_lines: int, seed: int
) -> Iterator[Frame]:
    """The inspection camera's frames, in order; each sheet is rendered once, when first seen."""
    h, w = config.frame_height, config.frame_width
    step = config.frame_step_px
    n_frames = int(np.ceil(total_lines / step))
    rendered: dict[int, Sheet] = {}
    passed = 0  # sheets wholly behind the current frame; frames only move forward
    for index in range(n_frames):
        first = round(index * step)
        image = background(config, first)
        masks = {c: np.zeros((h, w), bool) for c in CLASS_IDS}
        frame = Frame(index, image, {})
        while passed < len(plans) and plans[passed].start_px + plans[passed].length_px <= first:
            passed += 1
        for plan in plans[passed:]:
            if plan.start_px >= first + h:
                break
            r0, r1 = max(first, plan.start_px), min(first + h, plan.start_px + plan.length_px)
            if plan.index not in rendered:
                rendered = {i: s for i, s in rendered.items() if i >= plan.index - 1}
                rendered[plan.index] = render_sheet(config, plan, seed)
                frame.new_sheets.append(rendered[plan.index])
            sheet = rendered[plan.index]
            rows = slice(r0 - first, r1 - first)
            sheet_rows = slice(r0 - plan.start_px, r1 - plan.start_px)
            cols = slice(plan.left_px, plan.left_px + plan.width_px)
            image[rows, cols] = sheet.surface[sheet_rows]
            for c in CLASS_IDS:
                masks[c][rows, cols] = sheet.masks[c][sheet_rows]
            frame.sheets.append(
                {
                    "sheet_id": plan.sheet_id,
                    "first_row": r0 - first,
                    "last_row": r1 - first - 1,
                    "x_min": plan.left_px,
                    "x_max": plan.left_px + plan.width_px - 1,
                }
            )
            marking = _marking_in_frame(sheet, first, h)
            if marking:
                frame.markings.append(marking)
        if config.surface_effects:  # uneven light, from its own stream
            lamp = rng_for(seed, LIGHT, index)
            if lamp.random() < config.surface_effects:
                image = image * light(lamp, image.shape, 1.0)
        frame.image = camera(config, image, rng_for(seed, FRAME, index), config.exposure)
        frame.rles = {c: rle_encode(masks[c]) for c in CLASS_IDS}
        yield frame


def _marking_in_frame(sheet: Sheet, first_line: int, frame_height: int) -> dict | None:
    """The marking's box in the frame, when at least half of it is inside."""
    top, left, bottom, right = sheet.marking_box
    y0 = sheet.plan.start_px + top - first_line
    y1 = sheet.plan.start_px + bottom - first_line
    visible = (min(y1, frame_height) - max(y0, 0)) / (y1 - y0)
    if visible < 0.5:
        return None
    x0 = sheet.plan.left_px + left
    return {
        "sheet_id": sheet.plan.sheet_id,
        "visible": round(float(visible), 3),
        "x_min": x0,
        "y_min": max(y0, 0),
        "x_max": x0 + right - left - 1,
        "y_max": min(y1, frame_height) - 1,
    }


def station_picture(
    config: TwinConfig, sheet: Sheet, seed: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The marking station's picture of a sheet (uint8) and the marking's box in it
    (x_min, y_min, x_max, y_max), under the station's own light, tilt, blur and noise."""
    rng = rng_for(seed, STATION, sheet.plan.index)
    d = config.distortion
    size = (config.station_width, config.station_height)
    scale_x = config.station_width / sheet.station_view.shape[1]
    scale_y = config.station_height / sheet.station_view.shape[0]
    angle = rng.normal(0, 1 + 3 * d)
    centre = (config.station_width / 2, config.station_height / 2)
    rotate = cv2.getRotationMatrix2D(centre, angle, 1.0)
    resized = cv2.resize(sheet.station_view, size, interpolation=cv2.INTER_AREA)
    image = cv2.warpAffine(resized, rotate, size, borderMode=cv2.BORDER_REFLECT)
    contrast = rng.uniform(1 - 0.4 * d, 1 + 0.2 * d)
    image = (image - image.mean()) * contrast + image.mean() * rng.normal(1, 0.1 + 0.2 * d)
    image = camera(config.model_copy(update={"distortion": d * 0.5}), image.astype(np.float32), rng)
    top, left, bottom, right = sheet.station_box
    corners = np.array([[left, top], [right, top], [left, bottom], [right, bottom]], np.float32)
    corners *= [scale_x, scale_y]
    moved = cv2.transform(corners[None], rotate)[0]
    x_min, y_min = np.floor(moved.min(0)).clip(0, [size[0] - 1, size[1] - 1]).astype(int)
    x_max, y_max = np.ceil(moved.max(0)).clip(0, [size[0] - 1, size[1] - 1]).astype(int)
    return image, (int(x_min), int(y_min), int(x_max), int(y_max))
