"""The synthetic world the miniature model learns: one flat-coloured object on a dark background.

Fixed here because the training script, the semantic tests, the benchmark and the demo all rely on it
(docs/miniature.md describes it in words). numpy only: no torch, so any process may import it.

- colours: `PALETTE` (RGB); shapes: square, circle; motions: left, right, up, down, still;
- it travels `TRAVEL` of the frame along the named axis over the clip, whatever the clip's length, and
  stays whole inside the frame. Text-to-video: its path is centred in the frame and its size is
  `T2V_SIZE`, whatever the seed. Image-to-video: it starts wherever the image puts it, at any size in
  `SIZE_RANGE`;
- prompts: `a red square moving left`, `a blue circle standing still` (`PHRASINGS` lists the other forms
  the model was trained on); `parse_prompt` reads them back.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

BACKGROUND = (12, 12, 20)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
    "purple": (150, 60, 200),
}
SHAPES = ("square", "circle")
MOTIONS = ("left", "right", "up", "down", "still")
# Unit direction in image coordinates (x to the right, y down) of each motion.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
TRAVEL = 0.4  # of the frame's side along the motion's axis, first frame to last
SIZE_RANGE = (0.28, 0.38)  # the square's side or the circle's diameter, of the frame's shorter side
MARGIN = 0.03  # of the shorter side, kept free between the object and the frame's edge
# Text-to-video: one size and a centred path. A few-step sampler trained by regression makes the average of
# what the prompt allows (a model distilled with DMD would pick one of them instead): with sizes and starts
# that vary, that average is a soft blob whose colour drifts and whose square corners round off.
T2V_SIZE = 0.36

MOTION_WORDS = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "still": "standing still",
}
# The forms of a prompt the model was trained on; {c} colour, {s} shape, {m} motion words.
PHRASINGS = ("a {c} {s} {m}", "{c} {s} {m}", "a {c} {s}, {m}", "the {c} {s} is {m}")


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for."""

    colour: str
    shape: str
    motion: str

    def prompt(self, phrasing: int = 0) -> str:
        return PHRASINGS[phrasing].format(c=self.colour, s=self.shape, m=MOTION_WORDS[self.motion])


def all_specs() -> list[Spec]:
    """Every colour × shape × motion (60), in a fixed order."""
    return [Spec(c, s, m) for c, s, m in itertools.product(PALETTE, SHAPES, MOTIONS)]


_PROMPT = re.compile(
    r"\b(?P<c>"
    + "|".join(PALETTE)
    + r")\s+(?P<s>"
    + "|".join(SHAPES)
    + r")\b.*?\b(?P<m>"
    + "|".join(w.split()[-1] for w in MOTION_WORDS.values())
    + r")\b",
    re.IGNORECASE,
)


def parse_prompt(prompt: str) -> Spec | None:
    """The spec a prompt of the world names (`a red square moving left`), or None."""
    match = _PROMPT.search(prompt)
    if match is None:
        return None
    word = match["m"].lower()
    motion = next(m for m, words in MOTION_WORDS.items() if words.endswith(word))
    return Spec(match["c"].lower(), match["s"].lower(), motion)


@dataclass(frozen=True)
class Placement:
    """Where the object is: centre (x, y) in pixels at the first frame, size in pixels, travel in pixels."""

    x: float
    y: float
    size: float
    dx: float
    dy: float

    def centre(self, t: float) -> tuple[float, float]:
        """The centre at `t` in [0, 1] (first frame to last)."""
        return self.x + self.dx * t, self.y + self.dy * t


def place(spec: Spec, width: int, height: int, rng: np.random.Generator, anywhere: bool = False) -> Placement:
    """Text-to-video: `T2V_SIZE` and the path centred in the frame (`rng` unused). `anywhere`: a random size
    and start where the whole path stays inside the frame (an image-to-video input's first frame)."""
    short = min(width, height)
    size = (rng.uniform(*SIZE_RANGE) if anywhere else T2V_SIZE) * short
    ux, uy = DIRECTIONS[spec.motion]
    dx, dy = ux * TRAVEL * width, uy * TRAVEL * height
    margin = size / 2 + MARGIN * short

    def start(extent: int, travel: float) -> float:
        low, high = margin + max(0.0, -travel), extent - margin - max(0.0, travel)
        if anywhere:
            return float(rng.uniform(low, high))
        return float(np.clip(extent / 2 - travel / 2, low, high))

    return Placement(start(width, dx), start(height, dy), float(size), float(dx), float(dy))


def coverage(shape: str, cx: float, cy: float, size: float, width: int, height: int) -> np.ndarray:
    """(height, width) float32 in [0, 1]: how much of each pixel the object covers (anti-aliased edges)."""
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    half = size / 2
    if shape == "square":
        # Exact: the overlap of each pixel's extent with the square's, along each axis.
        cover_x = np.clip(np.minimum(xs + 0.5, cx + half) - np.maximum(xs - 0.5, cx - half), 0, 1)
        cover_y = np.clip(np.minimum(ys + 0.5, cy + half) - np.maximum(ys - 0.5, cy - half), 0, 1)
        return cover_y[:, None] * cover_x[None, :]
    distance = np.hypot(xs[None, :] - cx, ys[:, None] - cy)
    return np.clip(half + 0.5 - distance, 0, 1).astype(np.float32)


def render(spec: Spec, placement: Placement, width: int, height: int, num_frames: int) -> np.ndarray:
    """(num_frames, height, width, 3) uint8."""
    colour = np.array(PALETTE[spec.colour], np.float32)
    background = np.array(BACKGROUND, np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        t = i / (num_frames - 1) if num_frames > 1 else 0.0
        cx, cy = placement.centre(t)
        alpha = coverage(spec.shape, cx, cy, placement.size, width, height)[..., None]
        frames[i] = np.rint(background + alpha * (colour - background)).astype(np.uint8)
    return frames


def clip(
    spec: Spec, width: int = 128, height: int = 128, num_frames: int = 17, seed: int = 0, anywhere: bool = False
) -> np.ndarray:
    """A clip of the world as the prompt for `spec` asks, placed by `seed` (`anywhere`: see `place`)."""
    rng = np.random.default_rng(seed)
    return render(spec, place(spec, width, height, rng, anywhere), width, height, num_frames)


def first_frame(spec: Spec, width: int = 128, height: int = 128, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: an image-to-video input, the object anywhere its path fits (`seed`)."""
    return clip(spec, width, height, 1, seed, anywhere=True)[0]
