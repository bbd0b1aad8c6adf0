"""The jobs a slot holds (buffer/held.py): which one the heartbeat shows, cancels asked once, stalled reports."""

from __future__ import annotations

import logging

from worker_app_fastwan.buffer.held import HeldJobs
from worker_app_fastwan.core.job_progress import JobProgress
from worker_app_fastwan.core.protocol import ClaimedJob
from worker_app_fastwan.core.schema import Stage


def _held(*job_ids: str) -> HeldJobs:
    held = HeldJobs()
    for job_id in job_ids:
        held.add(ClaimedJob(job_id=job_id, input={}, attempt=2))
    return held


def test_the_generating_job_is_the_one_whose_gpu_part_is_not_over() -> None:
    held = _held("a", "b")
    assert held.generating() is not None and held.generating().job_id == "a"  # type: ignore[union-attr]
    next(iter(held)).generated = True  # a's video is written: it uploads while b generates
    assert held.generating().job_id == "b"  # type: ignore[union-attr]
    assert held.first() is not None and held.first().attempt == 2  # type: ignore[union-attr]
    held.remove("a")
    held.remove("a")  # removing twice is harmless: a job's end is reported once, from one place
    assert held.ids() == ["b"] and len(held) == 1


def test_progress_is_kept_for_held_jobs_only() -> None:
    held = _held("a")
    progress = JobProgress("a")
    progress.advance(Stage.denoising, 2, 4)
    held.on_progress(progress)
    held.on_progress(JobProgress("gone"))  # a job no longer held: nothing to keep, no error
    job = held.first()
    assert job is not None and (job.stage, job.step) == (Stage.denoising, 2) and job.progress == progress.progress


def test_a_cancel_is_handed_out_once_per_job(caplog) -> None:
    held = _held("a")
    with caplog.at_level(logging.INFO, logger="worker_app_fastwan.buffer.held"):
        first = held.request_cancel("a")
        again = held.request_cancel("a")  # every heartbeat answer repeats it until the job is gone
    assert first is not None and first.cancel_requested and again is None
    assert held.request_cancel("unknown") is None
    assert [r.getMessage() for r in caplog.records] == ["cancelling job"]


def test_one_stalled_report_stalls_the_slot_and_is_logged_once(caplog) -> None:
    held = _held("a", "b")
    assert not held.stalled()
    job = held.first()
    assert job is not None
    with caplog.at_level(logging.WARNING, logger="worker_app_fastwan.buffer.held"):
        job.mark_stalled()
        job.mark_stalled()  # each failed retry marks it again
    assert held.stalled() and len(caplog.records) == 1
    held.remove("a")
    assert not held.stalled(), "claims resume once the stalled report went out"
