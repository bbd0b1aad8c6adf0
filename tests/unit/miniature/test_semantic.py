"""Does the production path still make the video the prompt asks for? The miniature FastWan (the `tiny`
backend's trained weights) through `WanGenerator.generate`, measured from the decoded frames.

A fixed, systematic subset of the world (bench/miniature_eval.py runs all of it): every colour, both shapes,
every motion, text-to-video and image-to-video, held to what the shipped weights do (`SHIPPED`, below the
issue's bar in `evaluate.THRESHOLDS` where BENCHMARKS.md says they fall short); a stored reference clip
catches silent numeric drift. Each check is shown to fail on a planted defect of the generation path
(prompt embeddings zeroed, image conditioning skipped, RGB swapped to BGR, frames reversed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import REPO

from worker_app_fastwan.miniature.evaluate import REFERENCE_CASE, Case, Results, frames_of, run_cases
from worker_app_fastwan.miniature.world import MOTIONS, PALETTE, SHAPES, Spec

pytestmark = pytest.mark.torch  # torch in this process: one xdist group (tests/conftest.py)

REFERENCE: Path = REPO / "tests" / "support" / "fixtures" / "miniature_reference.png"
REFERENCE_MIN_PSNR_DB = 40.0  # float noise of another library version passes; a changed computation does not

# What the shipped weights meet on this subset (measured: t2v colour 12/12, shape 7/12, motion 10/12; i2v motion
# 5/5, first frame 25.9-30.0 dB). Colour is held to the bar (evaluate.THRESHOLDS); shape sits below it (the
# model rounds squares' corners: BENCHMARKS.md), and motion too on this subset (two clips travel 0.18-0.19 of the
# frame where 0.2 counts; 92.5 % over the whole world). Text-to-video does not depend on the seed (the world fixes
# size and path), so these are the same on every run. A retrained model that does better raises them.
SHIPPED = {"colour": 0.95, "shape": 0.5, "motion": 0.8, "i2v_motion": 0.85, "i2v_psnr_db": 22.0}

COLOURS = list(PALETTE)
# 12 text-to-video clips: each colour twice (once per shape), each motion two or three times, fixed seeds.
T2V = [Case(Spec(c, SHAPES[i % 2], MOTIONS[i % 5]), seed=100 + i) for i, c in enumerate(COLOURS + COLOURS[::-1])]
# 5 image-to-video clips: each motion once, from an image of the world.
I2V = [Case(Spec(COLOURS[i], SHAPES[(i + 1) % 2], m), seed=200 + i, i2v=True) for i, m in enumerate(MOTIONS)]


def _run(backend: Any, cases: list[Case]) -> Results:
    return run_cases(backend.generator, cases)


def _explain(results: Results) -> str:
    wrong = [
        f"{o.case.prompt!r} seed {o.case.seed} {'i2v' if o.case.i2v else 't2v'}: measured {o.measurement.as_dict()}"
        + (f", first frame {o.first_frame_psnr:.1f} dB" if o.first_frame_psnr is not None else "")
        for o in results.outcomes
        if not all(o.verdict.values()) or (o.first_frame_psnr is not None and o.first_frame_psnr < 22)
    ]
    return f"{results.summary()}\n" + "\n".join(wrong)


def test_the_subset_covers_the_world() -> None:
    assert {c.spec.colour for c in T2V} == set(PALETTE) and {c.spec.shape for c in T2V} == set(SHAPES)
    assert {c.spec.motion for c in T2V} == set(MOTIONS) == {c.spec.motion for c in I2V}


def test_text_to_video_shows_the_colour_shape_and_motion_asked_for(tiny_backend) -> None:
    results = _run(tiny_backend, T2V)
    assert not results.failures(SHIPPED), _explain(results)


def test_image_to_video_starts_from_the_image_and_moves_as_asked(tiny_backend) -> None:
    results = _run(tiny_backend, I2V)
    low = [o.first_frame_psnr for o in results.i2v if (o.first_frame_psnr or 0) < SHIPPED["i2v_psnr_db"]]
    assert not results.failures(SHIPPED) and not low, _explain(results)


def test_a_fixed_seed_and_prompt_reproduce_the_reference_clip(tiny_backend) -> None:
    """Silent numeric drift (a diffusers, transformers or torch upgrade changing what the path computes).
    After retraining, `python bench/miniature_eval.py --write-reference` stores the new clip."""
    from PIL import Image

    from worker_app_fastwan.miniature.measure import psnr

    frames = frames_of(tiny_backend.generator, REFERENCE_CASE)
    stored = np.asarray(Image.open(REFERENCE).convert("RGB"))
    expected = stored.reshape(stored.shape[0], len(frames), -1, 3).transpose(1, 0, 2, 3)  # a strip, frame by frame
    assert frames.shape == expected.shape
    assert psnr(frames, expected) >= REFERENCE_MIN_PSNR_DB, f"{psnr(frames, expected):.1f} dB from the reference"


# ---- planted defects: each check fails when the path is broken this way ----------------------------------


def _zero_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker_app_fastwan.pipelines.wan import WanGenerator

    real = WanGenerator._encode_prompt
    monkeypatch.setattr(WanGenerator, "_encode_prompt", lambda self, prompt: real(self, prompt) * 0)


def _skip_image(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker_app_fastwan.pipelines.wan import WanGenerator

    real = WanGenerator._initial_latents
    monkeypatch.setattr(WanGenerator, "_initial_latents", lambda self, job, image, gen: real(self, job, None, gen))


def _bgr(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker_app_fastwan.pipelines import wan

    real = wan._to_uint8
    monkeypatch.setattr(wan, "_to_uint8", lambda video: np.ascontiguousarray(real(video)[..., ::-1]))


def _reversed(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker_app_fastwan.pipelines.wan import WanGenerator

    real = WanGenerator.decode_stream

    def backwards(self: Any, latents: Any) -> Iterator[np.ndarray]:
        yield np.concatenate(list(real(self, latents)))[::-1]

    monkeypatch.setattr(WanGenerator, "decode_stream", backwards)


# (defect, the cases it is tried on, the failures it must cause)
DEFECTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], list[Case], set[str]]] = {
    "prompt embeddings zeroed": (_zero_prompt, T2V[:6], {"colour", "motion"}),
    "image conditioning skipped": (_skip_image, I2V[:2], {"i2v_psnr_db"}),
    # Clips whose colour the model gets right and that BGR moves to another palette colour (not white).
    "RGB swapped to BGR": (_bgr, [T2V[0], T2V[2], T2V[8], T2V[9]], {"colour"}),
    "frames reversed": (
        _reversed,
        [c for c in T2V if c.spec.motion != "still"][:3] + [c for c in I2V if c.spec.motion != "still"][:1],
        {"motion", "i2v_motion", "i2v_psnr_db"},
    ),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_planted_defect_fails_the_checks(tiny_backend, monkeypatch: pytest.MonkeyPatch, defect: str) -> None:
    plant, cases, expected = DEFECTS[defect]
    plant(monkeypatch)
    results = _run(tiny_backend, cases)
    failed = {failure.split()[0] for failure in results.failures(SHIPPED)}
    assert expected <= failed, f"{defect}: expected {sorted(expected)} to fail; {_explain(results)}"
