"""Real steel's non-defects (core.steel_look): drawn where asked, never over a defect."""

from __future__ import annotations

import numpy as np
import pytest

from core.steel_look import EFFECTS, distract, splashed, stains


def flat(shape=(256, 512)) -> np.ndarray:
    return np.full(shape, 100.0, np.float32)


def test_a_splash_saturates_steel_and_leaves_every_defect_pixel_as_it_was() -> None:
    defects = np.zeros((960, 720), bool)
    defects[470:490, :] = True  # across the middle, where every cluster is centred
    image = flat(defects.shape)
    image[defects] = 60.0
    for seed in range(5):
        out = splashed(np.random.default_rng(seed), image, defects)
        assert (out[defects] == 60.0).all()
        assert (out > 200).sum() > 0, "the splash shows off the defect"


@pytest.mark.parametrize("effect", EFFECTS)
def test_each_effect_is_drawn_with_its_chance_and_only_the_edge_leaves_the_strip(
    effect: str,
) -> None:
    image = flat()
    defects = np.zeros(image.shape, bool)
    unchanged, off = distract(np.random.default_rng(0), image, defects, 0.0, effects=(effect,))
    assert np.array_equal(unchanged, image) and not off.any()
    changed = 0
    for seed in range(8):
        out, off = distract(np.random.default_rng(seed), image, defects, 1.0, effects=(effect,))
        changed += not np.allclose(out, image)
        if effect == "edge":
            assert 0 < off.mean() < 1 and (out[off] < 20).all()
            assert off.all(axis=1).sum() == 0 or off.any(axis=0).all()  # along the rows
        else:
            assert not off.any()
    assert changed == 8


def test_an_unknown_effect_is_named() -> None:
    with pytest.raises(ValueError, match="rust"):
        distract(
            np.random.default_rng(0), flat(), np.zeros((256, 512), bool), 1.0, effects=("rust",)
        )


def test_stains_are_drawn_out_either_way_not_only_along_the_line() -> None:
    """A stain drawn out only along the rolling direction (rows) is what a scratch looks
    like; real oil and water stains are pools and drops of any shape."""
    along_rows = 0
    for seed in range(20):
        gain = stains(np.random.default_rng(seed), (512, 512), 1.0)
        assert gain.min() > 0.4 and gain.max() <= 1.0
        # a stain changes more slowly along the axis it is drawn out along
        along_rows += np.abs(np.diff(gain, axis=0)).mean() < np.abs(np.diff(gain, axis=1)).mean()
    assert 4 <= along_rows <= 16
