"""The start-up warm-up plans only sizes the card admits (issue 24, item 4), and the budget counts cuDNN's
autotuning workspace when CUDNN_BENCHMARK turns it on (item 8). No torch here: plans and budgets only."""

from __future__ import annotations

import pytest

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import JobInput
from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.job.capacity import check_capacity
from worker_app_fastwan.model.memory_budget import CUDNN_BENCHMARK_WORKSPACE_BYTES, GIB, estimate
from worker_app_fastwan.model.offload import DEFAULT_JOB, admission, check_job_fits, choose_profile, max_frames
from worker_app_fastwan.pipelines.base import SMALL_SIZE, warmup_plan

# GiB as torch reports them: 10 GB … H100 80 GB, and the 15.6 GiB card of the issue.
CARDS = (9.8, 11.8, 15.6, 15.7, 19.5, 22.0, 23.6, 31.4, 39.4, 44.3, 47.5, 79.1)


def _size(item) -> tuple[int, int, int]:
    return (item.job.width, item.job.height, item.job.num_frames)


@pytest.mark.parametrize("cudnn_benchmark", [False, True])
@pytest.mark.parametrize("requested", ["auto", "none", "balanced", "low_vram"])
@pytest.mark.parametrize("vram", CARDS)
def test_every_warmup_item_passes_the_admission_check(vram: float, requested: str, cudnn_benchmark: bool) -> None:
    budget = {"vae_dtype": "bfloat16", "cudnn_benchmark": cudnn_benchmark}
    profile = choose_profile(requested, vram, **budget)
    admits = admission(vram, profile, **budget)
    for compiled in (False, True):
        for item in warmup_plan(compiled=compiled, i2v=True, admits=admits, tune_decode=cudnn_benchmark):
            check_job_fits(*_size(item), vram, profile, **budget)  # raises JobFailure for a refused size


def test_a_card_that_refuses_the_default_size_warms_up_the_most_it_admits() -> None:
    """The issue's card: 15.6 GiB, `low_vram`, compiled, image-to-video on: 1280×704×121 is refused there."""
    admits = admission(15.6, "low_vram")
    assert not admits(*DEFAULT_JOB)
    best = max_frames(1280, 704, 15.6, "low_vram")
    assert best is not None and best < 121
    plan = warmup_plan(compiled=True, i2v=True, admits=admits)
    compiled = [(_size(i), i.image is not None) for i in plan if not i.decode]
    large = (1280, 704, best)
    # both modes at two sizes: the dynamic graph that serves later sizes is compiled at start-up
    assert compiled == [(large, False), (SMALL_SIZE, False), (large, True), (SMALL_SIZE, True)]
    assert [_size(i) for i in plan if i.decode] == [SMALL_SIZE]


def test_a_card_that_admits_nothing_warms_up_nothing() -> None:
    """A 10 GB card cannot hold the transformer: its jobs are refused (out_of_memory); the warm-up would only
    run it out of memory and keep the worker from starting to say so."""
    assert warmup_plan(compiled=True, i2v=True, admits=admission(9.8, "low_vram"), tune_decode=True) == []


def test_cudnn_autotuning_warms_up_the_decode_at_the_large_size() -> None:
    plan = warmup_plan(compiled=False, i2v=False, tune_decode=True)
    assert [(_size(i), i.decode) for i in plan] == [(DEFAULT_JOB, True), (SMALL_SIZE, True)]
    assert [(_size(i), i.decode) for i in warmup_plan(compiled=False, i2v=False)] == [(SMALL_SIZE, True)]


def test_cudnn_autotuning_workspace_is_in_the_decode_budget() -> None:
    plain = estimate(1280, 704, 121, "balanced")
    tuned = estimate(1280, 704, 121, "balanced", cudnn_benchmark=True)
    assert tuned.decode_gib - plain.decode_gib == pytest.approx(CUDNN_BENCHMARK_WORKSPACE_BYTES / GIB)
    assert tuned.denoise_gib == plain.denoise_gib
    # where the decode is the peak (`balanced` on a 16 GB card), fewer frames fit
    assert max_frames(1280, 704, 15.7, "balanced", cudnn_benchmark=True) < max_frames(1280, 704, 15.7, "balanced")


def test_the_parents_admission_counts_the_workspace_when_autotuning_is_on(tmp_path) -> None:
    """job/capacity.py, the check every job passes before any GPU work, uses CUDNN_BENCHMARK."""
    mib = 16_076  # a 16 GB card (15.7 GiB) under `balanced`, where the decode is the peak
    frames = max_frames(1280, 704, mib / 1024, "balanced")
    assert frames is not None
    big = JobInput(prompt="x", width=1280, height=704, num_frames=frames)
    card = DeviceInfo(backend="diffusers", model="m", device="cuda:0", memory_total_mb=mib, offload_profile="balanced")
    check_capacity(load_settings(None, STATE_DIR=tmp_path), card, big, "t2v")
    with pytest.raises(JobFailure, match="num_frames"):
        check_capacity(load_settings(None, STATE_DIR=tmp_path, CUDNN_BENCHMARK=True), card, big, "t2v")
