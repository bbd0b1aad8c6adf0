"""The claim loop against a v1.3 orchestrator, which holds an empty claim open (long poll), and a v1.2 one,
which answers at once (support/fakes.py's FakeOrchestrator): the worker asks to wait, claims again at once after
a held claim, and sleeps CLAIM_POLL_S only when the orchestrator did not wait."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.fakes import FakeOrchestrator, FakeSpawn, buffer_settings, fake_slot, job

pytestmark = pytest.mark.anyio
POLL_S = 0.4


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _claims_until_the_job(tmp_path: Path, orch: FakeOrchestrator, **settings: object) -> list[float]:
    config = buffer_settings(tmp_path, CLAIM_POLL_S=POLL_S, BUFFER_EXIT_WHEN_IDLE=False, BUFFER_MAX_JOBS=1, **settings)
    assert await fake_slot(config, orch, FakeSpawn()).run() == 0
    claims = [s for s in orch.seen if s.path.endswith("/claim")]
    assert all(c.body["wait_s"] == config.CLAIM_WAIT_S for c in claims), "every claim asks to wait"
    return [c.at for c in claims]


async def test_after_a_held_claim_the_worker_claims_again_at_once(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("j-1")], empty_claims=3, long_poll=True)
    at = await _claims_until_the_job(tmp_path, orch, CLAIM_WAIT_S=20)
    assert len(at) == 4 and at[-1] - at[0] < 2 * POLL_S, "no poll sleep between held claims"


async def test_an_orchestrator_that_did_not_wait_gets_the_poll_sleep(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("j-1")], empty_claims=3)  # v1.2: no X-Claim-Wait-S
    at = await _claims_until_the_job(tmp_path, orch, CLAIM_WAIT_S=20)
    assert len(at) == 4 and at[-1] - at[0] >= 3 * POLL_S


async def test_a_burst_run_asks_not_to_wait(tmp_path: Path) -> None:
    orch = FakeOrchestrator(long_poll=True)
    assert await fake_slot(buffer_settings(tmp_path, CLAIM_WAIT_S=20), orch, FakeSpawn()).run() == 0
    claims = [s.body for s in orch.seen if s.path.endswith("/claim")]
    assert [c["wait_s"] for c in claims] == [0.0], "BUFFER_EXIT_WHEN_IDLE: nothing queued means exit, at once"


async def test_the_reason_for_no_jobs_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    note = "3 failed attempts in a row; no jobs until 2030-01-01T00:00:00.000Z"
    orch = FakeOrchestrator(jobs=[job("j-1")], empty_claims=3, long_poll=True, claim_note=note)
    with caplog.at_level(logging.INFO, logger="worker_app_fastwan.buffer.slot"):
        await _claims_until_the_job(tmp_path, orch, CLAIM_WAIT_S=5)
    said = [r for r in caplog.records if "no jobs" in r.getMessage()]
    assert len(said) == 1 and said[0].reason == note  # type: ignore[attr-defined]
    assert any(r.getMessage() == "the orchestrator gives this worker jobs again" for r in caplog.records)
