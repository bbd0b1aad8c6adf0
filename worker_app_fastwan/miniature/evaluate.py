"""Generate clips of the world through the production path and score them (`measure`).

Used by the accuracy benchmark (bench/miniature_eval.py, the whole grid), the semantic tests (a subset) and
the training script's closing check. Text-to-video cases are scored on colour, shape and motion;
image-to-video cases (the input image is a first frame of the world) on the first frame's PSNR against the
input and on the motion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from worker_app_fastwan.core.schema import JobInput
from worker_app_fastwan.miniature.measure import Measurement, measure, psnr
from worker_app_fastwan.miniature.world import Spec, all_specs, first_frame

# The bar, over every colour x shape x motion with two seeds.
THRESHOLDS = {"colour": 0.95, "motion": 0.90, "shape": 0.85, "i2v_motion": 0.85, "i2v_psnr_db": 22.0}
I2V_IMAGE_SEED = 10_000  # the input image's placement seed is the case's seed plus this
# The clip stored as tests/fixtures/miniature_reference.png (every frame side by side): numeric drift shows.


@dataclass(frozen=True)
class Case:
    spec: Spec
    seed: int
    i2v: bool = False
    width: int = 128
    height: int = 128
    num_frames: int = 17
    phrasing: int = 0

    @property
    def prompt(self) -> str:
        return self.spec.prompt(self.phrasing)

    def job(self) -> JobInput:
        return JobInput(
            prompt=self.prompt,
            width=self.width,
            height=self.height,
            num_frames=self.num_frames,
            seed=self.seed,
            num_inference_steps=3,
            image_url="http://input.invalid/first-frame.png" if self.i2v else None,
        )

    def image(self) -> np.ndarray | None:
        """The image-to-video input: a first frame of the world showing this case's object."""
        if not self.i2v:
            return None
        return first_frame(self.spec, self.width, self.height, seed=self.seed + I2V_IMAGE_SEED)


@dataclass
class Outcome:
    case: Case
    measurement: Measurement
    seconds: float
    first_frame_psnr: float | None = None

    @property
    def verdict(self) -> dict[str, bool]:
        return self.measurement.verdict(self.case.spec)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.case.prompt,
            "seed": self.case.seed,
            "mode": "i2v" if self.case.i2v else "t2v",
            "size": f"{self.case.width}x{self.case.height}x{self.case.num_frames}",
            "measured": self.measurement.as_dict(),
            "right": self.verdict,
            "first_frame_psnr_db": None if self.first_frame_psnr is None else round(self.first_frame_psnr, 2),
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def t2v(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.case.i2v]

    @property
    def i2v(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.case.i2v]

    def summary(self) -> dict[str, Any]:
        """Shares right (0-1), the mean first-frame PSNR of image-to-video, and counts."""
        out: dict[str, Any] = {"t2v_clips": len(self.t2v), "i2v_clips": len(self.i2v)}
        for key in ("colour", "shape", "motion"):
            if self.t2v:
                out[key] = round(float(np.mean([o.verdict[key] for o in self.t2v])), 4)
        if self.i2v:
            out["i2v_motion"] = round(float(np.mean([o.verdict["motion"] for o in self.i2v])), 4)
            psnrs = [o.first_frame_psnr for o in self.i2v if o.first_frame_psnr is not None]
            out["i2v_psnr_db"] = round(float(np.mean(psnrs)), 2)
            out["i2v_psnr_min_db"] = round(float(np.min(psnrs)), 2)
        return out

    def failures(self, thresholds: dict[str, float] = THRESHOLDS) -> list[str]:
        """Each figure of `summary` below its threshold, in words (empty: all pass)."""
        summary = self.summary()
        return [
            f"{key} {summary[key]} < {bar}" for key, bar in thresholds.items() if key in summary and summary[key] < bar
        ]


REFERENCE_CASE = Case(Spec("purple", "circle", "down"), seed=5)


def frames_of(generator: Any, case: Case) -> np.ndarray:
    """The case's clip through `WanGenerator.generate`, all frames (F, H, W, 3) uint8."""
    image = case.image()
    generation = generator.generate(case.job(), None if image is None else Image.fromarray(image), lambda *_: None)
    return np.concatenate(list(generation.frames))


def grid(seeds: Iterable[int] = (0, 1), width: int = 128, height: int = 128, num_frames: int = 17) -> list[Case]:
    """Every colour x shape x motion with each seed, text-to-video, then the same as image-to-video."""
    seeds = list(seeds)
    size = {"width": width, "height": height, "num_frames": num_frames}
    t2v = [Case(spec, seed, False, **size) for seed in seeds for spec in all_specs()]
    i2v = [Case(spec, seed, True, **size) for seed in seeds for spec in all_specs()]
    return t2v + i2v


def run_case(generator: Any, case: Case) -> Outcome:
    """One clip through `WanGenerator.generate` (what every backend built on it runs), decoded to uint8."""
    started = time.perf_counter()
    frames = frames_of(generator, case)
    return score(case, frames, time.perf_counter() - started)


def score(case: Case, frames: np.ndarray, seconds: float = 0.0) -> Outcome:
    """Measure decoded frames (from a tensor, or from a stored MP4) against the case."""
    image = case.image()
    first = None if image is None else psnr(frames[0], image)
    return Outcome(case, measure(frames), seconds, first)


def run_cases(generator: Any, cases: Iterable[Case], progress: Callable[[Outcome], None] | None = None) -> Results:
    results = Results()
    for case in cases:
        outcome = run_case(generator, case)
        results.outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return results
