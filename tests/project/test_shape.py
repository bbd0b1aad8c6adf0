"""The code's shape, checked: no import cycle in either package, and module length as a review prompt.

The layer rules (which package may import which) are tests/project/test_layers.py."""

from __future__ import annotations

import warnings

from support import REPO
from support.imports import cycle, graph, modules


def test_no_import_cycle_in_either_package() -> None:
    found = cycle(graph(modules(REPO)))
    assert found is None, " -> ".join(found or [])


def test_the_cycle_check_can_see_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# Length is a prompt, not a law: a module past REVIEW_LINES is named in the test run's warnings, for its
# reviewer to ask whether it does two things (then split it along that seam) or one (then leave it whole:
# twenty-line fragments of one idea read worse than one long module). Past MAX_LINES it fails: no single idea
# in this code base needs that much.
REVIEW_LINES = 300
MAX_LINES = 450
# Past REVIEW_LINES, looked at, and left whole on purpose: the module and why (a reviewer's note, not a waiver).
REVIEWED = {
    "worker_app_fastwan/job/runner.py": "one job path (validate, image, GPU child, upload) and the factory that "
    "builds it with its GPU process; its helpers already live in job/result.py, job/image.py, job/capacity.py",
    "worker_app_fastwan/miniature/train.py": "one training run, its three stages in the order they run (VAE, "
    "latents, denoiser) and the plan that drives them; the run's record already lives in miniature/record.py",
}


def _lengths() -> dict[str, int]:
    return {
        path.relative_to(REPO).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in modules(REPO).values()
    }


def _over(lengths: dict[str, int], limit: int) -> dict[str, int]:
    return {path: n for path, n in sorted(lengths.items()) if n > limit}


def test_long_modules_are_named_for_review_and_none_is_past_the_limit() -> None:
    lengths = _lengths()
    if long := {path: n for path, n in _over(lengths, REVIEW_LINES).items() if path not in REVIEWED}:
        warnings.warn(f"over {REVIEW_LINES} lines, worth a look in review: {long}", stacklevel=1)
    assert _over(lengths, MAX_LINES) == {}


def test_the_length_check_can_see_a_long_module() -> None:
    lengths = {"worker_app_fastwan/a.py": MAX_LINES + 1, "worker_app_fastwan/b.py": MAX_LINES}
    assert _over(lengths, MAX_LINES) == {"worker_app_fastwan/a.py": MAX_LINES + 1}
