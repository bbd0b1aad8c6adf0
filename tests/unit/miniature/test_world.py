"""The miniature's world and the measurements the semantic tests rely on, on rendered clips (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from worker_app_fastwan.miniature.measure import measure, psnr
from worker_app_fastwan.miniature.world import (
    PHRASINGS,
    SIZE_RANGE,
    T2V_SIZE,
    Spec,
    all_specs,
    clip,
    coverage,
    parse_prompt,
    place,
)

# The whole world at the small size; a spread of it at the larger and a portrait size.
SIZES = [(128, 128, 17, 1), (256, 256, 33, 7), (128, 256, 9, 5)]


@pytest.mark.parametrize(("width", "height", "frames", "every"), SIZES)
def test_clips_of_the_world_are_measured_as_what_they_show(width: int, height: int, frames: int, every: int) -> None:
    for n, spec in enumerate(all_specs()[::every]):
        verdict = measure(clip(spec, width, height, frames, seed=n)).verdict(spec)
        assert all(verdict.values()), (spec, n, verdict)


def test_the_measurements_catch_what_a_broken_pipeline_does() -> None:
    """Swapped colour channels, frames in reverse, a frozen frame: each is measured as wrong."""
    red_right = Spec("red", "square", "right")
    frames = clip(red_right, seed=3)
    assert measure(frames[..., ::-1]).verdict(red_right)["colour"] is False  # BGR: red reads blue
    assert measure(frames[::-1]).verdict(red_right)["motion"] is False
    frozen = np.repeat(frames[:1], len(frames), axis=0)
    assert measure(frozen).verdict(red_right)["motion"] is False
    circle = clip(Spec("red", "circle", "right"), seed=3)
    assert measure(circle).verdict(red_right)["shape"] is False
    assert measure(np.zeros_like(frames)).colour is None  # nothing there: no colour, no shape, no motion


def test_every_phrasing_parses_back_to_its_spec() -> None:
    for spec in all_specs():
        for phrasing in range(len(PHRASINGS)):
            assert parse_prompt(spec.prompt(phrasing)) == spec
    assert parse_prompt("a lighthouse on a cliff at dusk") is None


@pytest.mark.parametrize("anywhere", [False, True])
def test_the_object_stays_whole_in_the_frame_and_travels_its_distance(anywhere: bool) -> None:
    rng = np.random.default_rng(0)
    for spec in all_specs():
        for width, height in ((128, 128), (256, 128)):
            placement = place(spec, width, height, rng, anywhere)
            for t in (0.0, 1.0):
                x, y = placement.centre(t)
                half = placement.size / 2
                assert half <= x <= width - half and half <= y <= height - half, (spec, placement)
            middle = placement.centre(0.5)
            if not anywhere:  # text-to-video: one size, the path's middle at the frame's centre, whatever the seed
                assert middle == pytest.approx((width / 2, height / 2))
                assert placement.size == pytest.approx(T2V_SIZE * min(width, height))
                assert place(spec, width, height, np.random.default_rng(7)) == placement
            else:
                low, high = SIZE_RANGE
                assert low * min(width, height) <= placement.size <= high * min(width, height)
            area = coverage(spec.shape, *placement.centre(0.0), placement.size, width, height).sum()
            expected = placement.size**2 * (1 if spec.shape == "square" else np.pi / 4)
            assert area == pytest.approx(expected, rel=0.03)


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(48.13, abs=0.01)
