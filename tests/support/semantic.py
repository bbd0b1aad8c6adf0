"""Semantic checks of decoded videos of the miniature's world: does a stored MP4 show what its prompt asks?"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from support.video import read_video
from worker_app_fastwan.miniature.evaluate import Case, score
from worker_app_fastwan.miniature.measure import psnr
from worker_app_fastwan.miniature.world import first_frame, parse_prompt

I2V_MIN_PSNR_DB = 22.0


def assert_shows_prompt(video: Path | str, prompt: str) -> None:
    """Colour, shape and motion of the decoded MP4 are the ones `prompt` names."""
    spec = parse_prompt(prompt)
    assert spec is not None, f"not a prompt of the miniature's world: {prompt!r}"
    frames, _ = read_video(video)
    outcome = score(Case(spec, seed=0), frames)
    wrong = {k for k, right in outcome.verdict.items() if not right}
    assert not wrong, f"{prompt!r}: wrong {sorted(wrong)}; measured {outcome.measurement.as_dict()}"


def assert_starts_from_image_and_moves(video: Path | str, image: np.ndarray, prompt: str) -> None:
    """Image-to-video: frame 0 is the input image (PSNR) and the object moves as `prompt` says."""
    spec = parse_prompt(prompt)
    assert spec is not None, f"not a prompt of the miniature's world: {prompt!r}"
    frames, _ = read_video(video)
    first = psnr(frames[0], image)
    outcome = score(Case(spec, seed=0), frames)
    assert first >= I2V_MIN_PSNR_DB, f"first frame {first:.1f} dB from the input image (< {I2V_MIN_PSNR_DB} dB)"
    assert outcome.verdict["motion"], f"{prompt!r}: wrong motion; measured {outcome.measurement.as_dict()}"


def world_image(prompt: str, width: int = 128, height: int = 128, seed: int = 0) -> np.ndarray:
    """A first frame of the world showing the object `prompt` names (an image-to-video input)."""
    spec = parse_prompt(prompt)
    assert spec is not None, prompt
    return first_frame(spec, width, height, seed)
