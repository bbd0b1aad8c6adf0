"""What a video of the miniature's world shows, measured from its decoded frames (numpy only).

- colour: every clearly-coloured object pixel votes for its nearest palette colour; the most votes win;
- shape: the fill ratio of the object's bounding box, median over frames (a square fills it, a circle
  covers pi/4 of it); the threshold sits between the two. The object is cut out at half its own contrast,
  so that a soft edge neither grows nor shrinks it (a low cut would round a blurred square's corners);
- motion: the centroid track, fitted by a line over the clip: its displacement first frame to last, as a
  fraction of the frame's side. Still when it moves less than `STILL_MAX`; else the dominant axis and sign,
  and right only when it travels at least `MIN_TRAVEL` along the named axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker_app_fastwan.miniature.world import BACKGROUND, DIRECTIONS, PALETTE, TRAVEL, Spec

OBJECT_DIFF = 48  # a pixel belongs to the object when a channel differs from the background by more
CORE_DIFF = 96  # ...and votes for the colour when it differs by more than this (edges blend with the background)
MIN_PIXELS = 12  # fewer object pixels in a frame: the object is not in that frame
SQUARE_FILL = 0.88  # fill ratios above: square; below: circle (pi/4 = 0.785; a blurred square keeps > 0.9)
STILL_MAX = 0.1  # of the frame's side: a smaller displacement is standing still
MIN_TRAVEL = TRAVEL / 2  # a motion counts only when it goes at least this far along its axis
MAX_SIDEWAYS = 0.15  # ...and no further than this across it

_NAMES = list(PALETTE)
_COLOURS = np.array([PALETTE[n] for n in _NAMES], np.float32)


@dataclass(frozen=True)
class Measurement:
    colour: str | None  # nearest palette colour of the dominant object colour; None: no object seen
    rgb: tuple[int, int, int] | None
    fill: float | None
    shape: str | None
    dx: float  # displacement first to last frame, fraction of the width (right is positive)
    dy: float  # ...fraction of the height (down is positive)
    motion: str | None
    frames_seen: int

    def verdict(self, spec: Spec) -> dict[str, bool]:
        """Whether colour, shape and motion are those `spec` names."""
        return {
            "colour": self.colour == spec.colour,
            "shape": self.shape == spec.shape,
            "motion": motion_right(self.dx, self.dy, spec.motion) if self.frames_seen >= 2 else False,
        }

    def as_dict(self) -> dict[str, object]:
        return {
            "colour": self.colour,
            "rgb": list(self.rgb) if self.rgb else None,
            "fill": None if self.fill is None else round(self.fill, 3),
            "shape": self.shape,
            "dx": round(self.dx, 3),
            "dy": round(self.dy, 3),
            "motion": self.motion,
            "frames_seen": self.frames_seen,
        }


def object_mask(frames: np.ndarray, threshold: int = OBJECT_DIFF) -> np.ndarray:
    """(F, H, W) bool: pixels that differ from the background by more than `threshold` in some channel."""
    diff = np.abs(frames.astype(np.int16) - np.array(BACKGROUND, np.int16)).max(axis=-1)
    return diff > threshold


def dominant_colour(frames: np.ndarray) -> tuple[str | None, tuple[int, int, int] | None]:
    core = frames[object_mask(frames, CORE_DIFF)].astype(np.float32)
    if len(core) < MIN_PIXELS:
        return None, None
    nearest = np.argmin(((core[:, None, :] - _COLOURS[None]) ** 2).sum(-1), axis=1)
    winner = int(np.bincount(nearest, minlength=len(_NAMES)).argmax())
    rgb = np.median(core[nearest == winner], axis=0)
    return _NAMES[winner], (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def half_contrast_mask(frame: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: the object cut out at half its median contrast against the background; None: no object."""
    diff = np.abs(frame.astype(np.int16) - np.array(BACKGROUND, np.int16)).max(axis=-1)
    coarse = diff > OBJECT_DIFF
    if coarse.sum() < MIN_PIXELS:
        return None
    return diff > 0.5 * float(np.median(diff[coarse]))


def fill_ratio(mask: np.ndarray) -> float | None:
    """Object pixels over the bounding box's area; stray rows and columns (under a tenth of the object's
    widest) do not stretch the box."""
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    if mask.sum() < MIN_PIXELS:
        return None
    keep_r = np.flatnonzero(rows >= max(1, 0.1 * rows.max()))
    keep_c = np.flatnonzero(cols >= max(1, 0.1 * cols.max()))
    top, bottom, left, right = keep_r[0], keep_r[-1] + 1, keep_c[0], keep_c[-1] + 1
    return float(mask[top:bottom, left:right].sum() / ((bottom - top) * (right - left)))


def motion_of(dx: float, dy: float) -> str:
    if max(abs(dx), abs(dy)) < STILL_MAX:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def motion_right(dx: float, dy: float, named: str) -> bool:
    """The named motion, travelled far enough along its axis and not too far across it; still: neither."""
    ux, uy = DIRECTIONS[named]
    if named == "still":
        return max(abs(dx), abs(dy)) < STILL_MAX
    along, across = dx * ux + dy * uy, abs(dx * uy) + abs(dy * ux)
    return along >= MIN_TRAVEL and across <= MAX_SIDEWAYS


def measure(frames: np.ndarray) -> Measurement:
    """`frames`: (F, H, W, 3) uint8, as decoded."""
    num, height, width, _ = frames.shape
    colour, rgb = dominant_colour(frames)
    fills, times, xs, ys = [], [], [], []
    for i in range(num):
        mask = half_contrast_mask(frames[i])
        if mask is None or mask.sum() < MIN_PIXELS:
            continue
        ys_i, xs_i = np.nonzero(mask)
        times.append(i / max(1, num - 1))
        xs.append(xs_i.mean() / width)
        ys.append(ys_i.mean() / height)
        if (ratio := fill_ratio(mask)) is not None:
            fills.append(ratio)
    fill = float(np.median(fills)) if fills else None
    shape = None if fill is None else ("square" if fill >= SQUARE_FILL else "circle")
    dx = dy = 0.0
    if len(times) >= 2:
        dx = float(np.polyfit(times, xs, 1)[0])  # slope over t in [0, 1]: the displacement first to last
        dy = float(np.polyfit(times, ys, 1)[0])
    return Measurement(colour, rgb, fill, shape, dx, dy, motion_of(dx, dy) if len(times) >= 2 else None, len(times))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
