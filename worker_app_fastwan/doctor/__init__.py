"""`python -m worker_app_fastwan doctor [--load] [--generate]`: can this box serve, as configured?

For a person renting a GPU box: one line per check with ✓ (passed), ✗ (failed and needed for the
configured mode), ! (wrong but not needed), – (not applicable or not asked for), and the reason. Exit 0 only
when nothing needed failed (`ExitCode.FAILED` otherwise). Secrets are never printed: URLs are shown as
scheme://host:port only and any secret value that would appear in a line is masked.

`--load` loads and warms the model in the GPU process, as the worker would (slow: minutes for the real
model); `--generate` also runs one short job and prints its timings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.doctor import checks, image
from worker_app_fastwan.doctor.gpu import CudaFacts, probe_in_child
from worker_app_fastwan.doctor.host_memory import host_ram_check
from worker_app_fastwan.doctor.report import Check, exit_code, fail, ok, skip, summary

if TYPE_CHECKING:
    from worker_app_fastwan.job.runner import JobRunner

# The short real generation of --generate: small enough for any card, every stage of a job.
PROBE_JOB = {"prompt": "doctor: a red fox in snow", "width": 256, "height": 256, "num_frames": 9, "seed": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", action="store_true", help="also load and warm up the model (slow: minutes)")
    parser.add_argument("--generate", action="store_true", help="also run one short job and print its timings")


def run_doctor(
    settings: Settings,
    *,
    load: bool = False,
    generate: bool = False,
    b2_api: Any = None,
    out: TextIO | None = None,
) -> ExitCode:
    """Run every check, print one line each as it completes, and return the exit code."""
    stream = out or sys.stdout
    hidden = (
        settings.INTERNAL_API_KEY,
        settings.B2_APP_KEY,
        settings.AWS_SECRET_ACCESS_KEY,
        settings.AWS_SESSION_TOKEN,
    )
    secrets = tuple(s.get_secret_value() for s in hidden if s)
    found: list[Check] = []

    def emit(*new: Check) -> None:
        for check in new:
            found.append(check)
            print(check.line(secrets), file=stream, flush=True)

    emit(checks.settings_check(settings), checks.state_dir_check(settings), image.folders_check(settings))
    emit(image.driver_check(settings, *image.torch_build(), image.host_driver()))
    # The tiny backend runs on the CPU: probing CUDA (a process that imports torch) would tell nothing it needs.
    facts = CudaFacts() if settings.PIPELINE_BACKEND == "tiny" else probe_in_child()
    emit(*checks.cuda_checks(settings, facts))
    emit(host_ram_check(settings, facts), checks.nvenc_check(settings), checks.model_check(settings))
    emit(checks.storage_check(settings, b2_api), checks.orchestrator_check(settings))
    if load or generate:
        emit(*asyncio.run(_load_and_generate(settings, facts, generate)))
    else:
        emit(skip("load", "not run (add --load to load the weights: slow), nor --generate"))
    print(summary(found), file=stream, flush=True)
    return exit_code(found)


async def _load_and_generate(settings: Settings, facts: CudaFacts, generate: bool) -> list[Check]:
    """Start the worker's own GPU process (load + warm-up), then optionally one short job, to a temp folder."""
    from worker_app_fastwan.job.runner import build_runner
    from worker_app_fastwan.job.storage import LocalStorage

    if settings.PIPELINE_BACKEND != "tiny" and not facts.available:
        return [fail("load", "skipped: no CUDA device (see the cuda line)")]
    quiet = settings.model_copy(update={"LOG_LEVEL": "WARNING"})
    with tempfile.TemporaryDirectory(prefix="fastwan-doctor-") as tmp:
        runner = build_runner(quiet, LocalStorage(Path(tmp) / "videos"))
        try:
            return await _run(runner, generate)
        finally:
            await runner.close()


async def _run(runner: JobRunner, generate: bool) -> list[Check]:
    start = time.monotonic()
    await runner.start()
    device = runner.device
    if not runner.ready or device is None:
        return [fail("load", f"the model did not load: {runner.unhealthy_reason}")]
    where = f"{device.backend} on {device.name}, profile {device.offload_profile}"
    loaded = ok("load", f"{where}: loaded and warmed up in {time.monotonic() - start:.1f} s")
    if not generate:
        return [loaded, skip("generate", "not run (add --generate for one short job)")]
    from worker_app_fastwan.core.errors import JobFailure

    size = f"{PROBE_JOB['width']}×{PROBE_JOB['height']}×{PROBE_JOB['num_frames']}"
    try:
        result = await runner.run("doctor-probe", PROBE_JOB)
    except JobFailure as exc:
        return [loaded, fail("generate", f"{size}: {exc.code.value}: {exc.message}")]
    t = result.timings
    return [
        loaded,
        ok(
            "generate",
            f"{size}, 3 steps: {t.inference_s:.1f} s generating, {t.encode_s:.2f} s encoding tail, "
            f"{t.total_s:.1f} s in all; {result.bytes:,} B MP4",
        ),
    ]
