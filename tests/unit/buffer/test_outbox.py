"""The outbox of final statuses: atomic writes, removal only after 200/409, oldest first, nothing lost."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from worker_app_fastwan.buffer.outbox import Outbox, deliver, flush, send_final
from worker_app_fastwan.core.protocol import StatusUpdate
from worker_app_fastwan.core.schema import ErrorCode, JobError
from worker_app_fastwan.orchestrator.client import OrchestratorClient

KEY = "outbox-test-key"


def failed(code: ErrorCode = ErrorCode.internal, message: str = "boom") -> StatusUpdate:
    return StatusUpdate(worker_id="w1", status="failed", error=JobError(code=code, message=message, retryable=True))


def client_for(answers: dict[str, list[int]], seen: list[tuple[str, dict]]) -> OrchestratorClient:
    """A real OrchestratorClient over a scripted transport: per job id, the status codes to answer in turn."""

    def handle(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.split("/")[-2]
        seen.append((job_id, json.loads(request.content)))
        script = answers.get(job_id, [200])
        code = script.pop(0) if len(script) > 1 else script[0]
        return httpx.Response(code, json={})

    return OrchestratorClient(
        "http://orchestrator.test", KEY, retry_initial_s=0.001, retry_max_s=0.01, transport=httpx.MockTransport(handle)
    )


def test_put_writes_the_whole_update_and_replaces_an_earlier_one(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    box.put("job-1", failed(message="first"))
    path = box.put("job-1", failed(message="second"))
    assert path == tmp_path / "outbox" / "job-1.json"
    assert StatusUpdate.model_validate_json(path.read_bytes()).error.message == "second"
    assert sorted(p.name for p in box.folder.iterdir()) == ["job-1.json"], "no temp file left behind"
    assert [(e.job_id, e.update.error.message) for e in box.pending()] == [("job-1", "second")]


def test_a_crash_before_the_rename_keeps_the_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(tmp_path / "outbox")
    box.put("job-1", failed(message="stored"))

    def crash(*_: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        box.put("job-1", failed(message="half-written"))
    monkeypatch.undo()
    assert [e.update.error.message for e in box.pending()] == ["stored"]
    assert sorted(p.name for p in box.folder.iterdir()) == ["job-1.json"]


def test_stale_temp_files_are_cleared_and_unreadable_entries_set_aside(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    folder.mkdir()
    (folder / ".job-1.abc123.tmp").write_text('{"worker_id": "w1", "sta')  # a crash mid-write
    (folder / "job-2.json").write_text("not json")
    box = Outbox(folder)
    assert not (folder / ".job-1.abc123.tmp").exists()
    assert box.pending() == []
    assert (folder / "job-2.unreadable").read_text() == "not json", "kept for a person, out of the way"


def test_job_ids_that_are_not_file_names_are_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    for bad in ("..", "a/b", "", "x" * 129):
        with pytest.raises(ValueError):
            box.put(bad, failed())


def test_pending_is_oldest_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    for job_id in ("zeta", "alpha", "mid"):
        box.put(job_id, failed())
    box.put("zeta", failed(message="rewritten"))  # a rewrite makes it the newest
    assert [e.job_id for e in box.pending()] == ["alpha", "mid", "zeta"]


def test_removed_after_ok_and_after_gone_kept_after_another_4xx(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    seen: list[tuple[str, dict]] = []
    client = client_for({"ok-job": [503, 502, 200], "gone-job": [409], "bad-job": [401]}, seen)
    for job_id in ("ok-job", "gone-job", "bad-job"):
        box.put(job_id, failed())

    outcomes = {
        job_id: asyncio.run(deliver(box, client, job_id, failed())) for job_id in ("ok-job", "gone-job", "bad-job")
    }

    assert outcomes == {"ok-job": "ok", "gone-job": "gone", "bad-job": "kept"}
    assert [job_id for job_id, _ in seen] == ["ok-job"] * 3 + ["gone-job", "bad-job"], "5xx retried, 4xx not"
    assert [e.job_id for e in box.pending()] == ["bad-job"]


def test_send_final_stores_before_it_sends(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    on_disk_when_sent: list[bool] = []

    def handle(request: httpx.Request) -> httpx.Response:
        on_disk_when_sent.append(box.path("job-1").exists())
        return httpx.Response(503 if len(on_disk_when_sent) < 2 else 200, json={})

    client = OrchestratorClient(
        "http://orchestrator.test", KEY, retry_initial_s=0.001, retry_max_s=0.01, transport=httpx.MockTransport(handle)
    )
    update = StatusUpdate(
        worker_id="w1", status="failed", error=JobError(code=ErrorCode.cancelled, message="stop", retryable=False)
    )
    assert asyncio.run(send_final(box, client, "job-1", update)) == "ok"
    assert on_disk_when_sent == [True, True]
    assert not box.path("job-1").exists()


def test_flush_delivers_oldest_first_and_reports_what_is_left(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    for job_id in ("c-job", "a-job", "b-job"):
        box.put(job_id, failed(message=job_id))
    seen: list[tuple[str, dict]] = []
    client = client_for({"a-job": [422]}, seen)

    assert asyncio.run(flush(box, client)) == 1
    assert [job_id for job_id, _ in seen] == ["c-job", "a-job", "b-job"]
    assert all(body["error"]["message"] == job_id for job_id, body in seen), "each file's own update is sent"
    assert [e.job_id for e in box.pending()] == ["a-job"]


@pytest.mark.parametrize("name", ["not a job id!.json", "..json", "a%2Fb.json"])
def test_a_file_named_like_no_job_id_is_set_aside_not_a_crash(tmp_path: Path, name: str) -> None:
    box = Outbox(tmp_path / "outbox")
    (box.folder / name).write_text(failed().model_dump_json())
    box.put("good-1", failed())

    assert [e.job_id for e in box.pending()] == ["good-1"]
    assert sorted(p.name for p in box.folder.iterdir()) == sorted(["good-1.json", Path(name).stem + ".unreadable"])


def test_a_stored_status_keeps_its_attempt_secret_for_a_later_start(tmp_path: Path) -> None:
    """v1.2: the orchestrator accepts a status of an attempt claimed with a secret only with that secret, so the
    outbox must keep it: a status delivered after a restart still proves its attempt. Never in a repr."""
    update = failed().model_copy(update={"attempt": 2, "attempt_secret": "s3cret-of-attempt-2"})
    box = Outbox(tmp_path / "outbox")
    path = box.put("job-1", update)
    assert path.stat().st_mode & 0o077 == 0, "the secret is readable by this user only"
    (entry,) = Outbox(tmp_path / "outbox").pending()  # a new process reads it back
    assert entry.update.attempt_secret == "s3cret-of-attempt-2" and entry.update.attempt == 2
    assert "s3cret" not in repr(entry.update) and "s3cret" not in str(entry)
    seen: list[tuple[str, dict]] = []
    assert asyncio.run(flush(box, client_for({}, seen))) == 0
    assert seen == [("job-1", json.loads(update.model_dump_json()))]
    assert seen[0][1]["attempt_secret"] == "s3cret-of-attempt-2"
