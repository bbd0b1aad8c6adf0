"""The JSON shapes the public API and the webhooks show: one job, one worker, ISO-8601 UTC times."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from orchestrator_stub.db import EventRow, Store
from orchestrator_stub.db.schema import loads
from worker_app_fastwan.edge.image import redact_url


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_view(store: Store, job: dict[str, Any]) -> dict[str, Any]:
    """A job as GET /v1/jobs/{id} shows it and as its webhook carries it.

    `notify_url` is left out on purpose: such URLs often embed a secret token, and this API has no auth;
    for the same reason `input.image_url` is shown without userinfo, query or fragment.
    `last_error` is why the latest attempt went back to the queue (`error` is only set once final).
    """
    requeues = store.requeues(job["job_id"])
    return {
        "job_id": job["job_id"],
        "status": job["status"],
        "stage": job["stage"],
        "progress": job["progress"],
        "step": job["step"],
        "total_steps": job["total_steps"],
        "message": job["message"],
        "attempts": job["attempt"],
        "worker_id": job["worker_id"],
        "cancel_requested": job["cancel_requested"],
        "input": _redacted_input(job["input"]),
        "result": job["result"],
        "error": job["error"],
        "last_error": requeues[-1]["error"] if requeues else None,
        "requeues": [_with_iso(r) for r in requeues],
        "created_at": iso(job["created_at"]),
        "updated_at": iso(job["updated_at"]),
        "completed_at": iso(job["completed_at"]),
        "lease_expires_at": iso(job["lease_expires_at"]),
        "webhook_state": job["webhook_state"],
        # Outcomes only: a status code or an error ("connection refused", "cannot resolve") for a URL of the
        # submitter's choosing would make this unauthenticated view a port and DNS scanner.
        "webhook_attempts": [
            {"attempt": a["attempt"], "at": iso(a["at"]), "ok": a["ok"], "type": a["type"]}
            for a in store.webhook_attempts(job["job_id"])
        ],
        "dispatch_attempts": [_with_iso(a) for a in store.dispatch_attempts(job["job_id"])],
    }


def _redacted_input(job_input: dict[str, Any]) -> dict[str, Any]:
    """The input without the image URL's userinfo, query and fragment: presigned URLs carry credentials there.

    Workers get the full URL in their claim; only this unauthenticated view (and the webhook) is redacted.
    """
    if isinstance(job_input.get("image_url"), str):
        return job_input | {"image_url": redact_url(job_input["image_url"])}
    return job_input


def event_view(event: EventRow) -> dict[str, Any]:
    """An event as streams send it: its `id` and `type`, the job's fields after the change (named as in the job
    view, `updated_at` being the event's time), and what the event adds: `input` and `created_at` when the job
    was submitted, `last_error` when it went back to the queue, `result` or `error` when it ended."""
    data: dict[str, Any] = loads(event.data)
    if isinstance(data.get("input"), dict):
        data["input"] = _redacted_input(data["input"])
    if "created_at" in data:
        data["created_at"] = iso(data["created_at"])
    return {"id": event.id, "type": event.type, **data, "updated_at": iso(event.at)}


def load_job_view(store: Store, job_id: str) -> dict[str, Any] | None:
    job = store.get_job(job_id)
    return None if job is None else job_view(store, job)


def worker_view(worker: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker_id": worker["worker_id"],
        "gpu_class": worker["gpu_class"],
        "state": worker["state"],
        "job_id": worker["job_id"],
        "stage": worker["stage"],
        "progress": worker["progress"],
        "gpu": worker["gpu"],
        "first_seen": iso(worker["first_seen"]),
        "last_seen": iso(worker["last_seen"]),
        "last_heartbeat": iso(worker["last_heartbeat"]),
        # Set while the worker is in quarantine (its last attempts failed): it gets no job until then.
        "quarantined_until": iso(worker.get("quarantined_until")),
    }


def _with_iso(attempt: dict[str, Any]) -> dict[str, Any]:
    return attempt | {"at": iso(attempt["at"])}
