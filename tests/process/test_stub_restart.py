"""Start-up and crash safety: the stub refuses to start without a key, SIGTERM exits 0, SIGKILL loses no job,
and the stub's own downtime costs no worker its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from support.stubs import REPO, Answer, ScriptedServer, StubProcess, wait_for


def test_refuses_to_start_without_internal_api_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "INTERNAL_API_KEY"} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator_stub", "--env-file", os.devnull],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "INTERNAL_API_KEY" in lines[0], done.stderr
    assert not (tmp_path / "orchestrator_stub.sqlite3").exists(), "nothing is created before the settings are good"


def test_sigterm_then_sigkill_restarts_lose_no_job(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory()
    done, held, queued = (stub.submit(f"job {n}") for n in range(3))
    assert stub.kill(signal.SIGTERM) == 0, "a clean shutdown is not a crash"
    assert "Application shutdown complete" in stub.log_text()
    stub.start()

    cancelled = stub.submit("cancel me")
    assert stub.claim_job("w1")["job_id"] == done
    assert stub.status(done, "w1", "completed").status_code == 200
    assert stub.claim_job("w2")["job_id"] == held
    stub.post(f"/v1/jobs/{cancelled}/cancel", key=None)
    before = {job_id: stub.job(job_id) for job_id in (done, held, queued, cancelled)}

    stub.restart()  # SIGKILL: no shutdown code runs

    after = {job_id: stub.job(job_id) for job_id in before}
    for job_id, view in before.items():
        for key in ("status", "input", "result", "error", "attempts", "worker_id", "created_at"):
            assert after[job_id][key] == view[key], (job_id, key)
    assert after[held]["lease_expires_at"] >= before[held]["lease_expires_at"], "a claimed job keeps its lease"
    assert stub.heartbeat("w2", held).json()["cancel_job_ids"] == []
    assert stub.status(held, "w2", "completed").status_code == 200
    assert stub.status(done, "w1", "completed").status_code == 200, "idempotent across the restart too"
    assert stub.claim_job("w3")["job_id"] == queued
    assert stub.get("/v1/jobs").json()["total"] == 4
    assert stub.get("/v1/queue").json()["counts"] == {
        "queued": 0,
        "claimed": 1,
        "running": 0,
        "completed": 2,
        "failed": 1,
    }


def test_pending_webhook_survives_a_restart(
    stub_factory: Callable[..., StubProcess], scripted_server: Callable[..., ScriptedServer]
) -> None:
    receiver = scripted_server([Answer(500), Answer(200)])
    stub = stub_factory(WEBHOOK_BASE_DELAY_S=60, WEBHOOK_MAX_DELAY_S=60)  # the retry would come a minute later
    job_id = stub.submit(notify_url=f"{receiver.url}/hook")
    stub.post(f"/v1/jobs/{job_id}/cancel", key=None)
    wait_for(lambda: stub.job(job_id)["webhook_attempts"], 3, what="the first webhook attempt")
    assert stub.job(job_id)["webhook_state"] == "pending"

    stub.kill()
    stub.env.update(WEBHOOK_BASE_DELAY_S="0.05", WEBHOOK_MAX_DELAY_S="0.05")
    stub.start()
    if stub.database not in (None, str(stub.db)):
        # PostgreSQL: other replicas may be up and keep the retry's time (a minute here), so a restart neither
        # loses the delivery nor sends it early. On SQLite the stub is the file's one process: it retries at once.
        view = stub.job(job_id)
        assert (view["webhook_state"], [a["ok"] for a in view["webhook_attempts"]]) == ("pending", [False])
        return
    view = wait_for(lambda: (v := stub.job(job_id))["webhook_state"] == "delivered" and v, 4, what="redelivery")
    assert [a["ok"] for a in view["webhook_attempts"]] == [False, True]
    assert len(receiver.requests) == 2


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_held_leases_restart_with_the_stub(stub_factory: Callable[..., StubProcess]) -> None:
    lease = 2.0
    stub = stub_factory(LEASE_SECONDS=lease)
    finished, silent = stub.submit("finished while the stub was down"), stub.submit("its worker went silent")
    assert [stub.claim_job(worker)["job_id"] for worker in ("w1", "w2")] == [finished, silent]
    stub.kill()
    time.sleep(lease + 0.3)  # both stored leases run out while nobody can renew them
    started = time.time()
    stub.start()
    ready = time.time()

    view = stub.job(silent)
    assert view["status"] == "claimed", "not taken from its worker at start-up"
    # The ISO time has millisecond precision (truncated), hence the 0.01 s of slack.
    assert started + lease - 0.01 <= _epoch(view["lease_expires_at"]) <= ready + lease, (started, ready, view)
    assert stub.status(finished, "w1", "completed").status_code == 200, "the result made in the dark is kept"

    # Without a heartbeat the restarted lease still runs out, lease_seconds after the start.
    requeued_at = wait_for(
        lambda: stub.job(silent)["status"] == "queued" and time.time(),
        lease + 3,
        what="the silent worker's lease to run out",
    )
    assert requeued_at >= started + lease
    assert stub.claim_job("w3")["attempt"] == 2
