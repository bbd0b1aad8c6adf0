"""The stub's web page: `GET /` and its assets under `/static/`, plus the two JSON routes only it needs.

- `GET /v1/studio/form`: each job field's default and limits, read from `schema.JobInput` (the API's own
  rules), so the form's spinners and presets never drift from what the API accepts; STUB_FORM_DEFAULTS, when
  set, replaces the defaults the form starts with (`make studio`: the miniature's world), not the API's. The
  API still judges every submission: the page shows its 422 message as it is.
- `GET /v1/studio/changes?since=CURSOR[&after=SEQ]`: the jobs changed since the cursor of the previous answer
  (the latest `limit` changes when `since` is 0), the queue counts, the most recently heard workers with
  how long each has been quiet, and `event_id`: the event log's newest id when the answer was read, where the
  page's event stream (`GET /v1/events`, streams.py) resumes. The page reads it once when it loads and then
  follows the stream; it polls it about once a second only while the stream is down, and a few hundred jobs
  then cost one small query per poll, not a list of all of them. The cursor lags the server's clock by
  OVERLAP_S: a change whose transaction read the clock before this query but committed after it is sent again
  next time rather than missed (the page ignores a job whose `updated_at` it already has).
  Every answer is bounded: at most `limit` jobs and about MAX_ANSWER_BYTES of them, and MAX_WORKERS_SHOWN
  workers (with `workers_total`). When more changed than one answer holds, it sends the oldest changes with
  `more: true` and a cursor just past the last one sent (`cursor` and `after`), and the page asks again at once.

Everything is served by the stub itself: plain HTML, CSS and JavaScript, no build step, no CDN.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

from orchestrator_stub.db import Store
from orchestrator_stub.settings import NUMERIC_FORM_FIELDS
from orchestrator_stub.views import iso, job_view, worker_view
from worker_app_fastwan.core.schema import SIDE_MULTIPLE, JobInput

STATIC_DIR = Path(__file__).resolve().parent / "static"
OVERLAP_S = 5.0
MAX_ANSWER_BYTES = 512 * 1024  # a poll's jobs, about: a job is 1-2 KB, at most ~40 KB (two 4000-character prompts)
MAX_WORKERS_SHOWN = 100
# Three missed beats at the worker's default HEARTBEAT_INTERVAL_S (5 s): the page shows the worker as quiet.
QUIET_AFTER_S = 15.0
FIELD_STEPS = {"width": SIDE_MULTIPLE, "height": SIDE_MULTIPLE, "num_frames": 4}


def mount(
    app: FastAPI,
    store: Store,
    media_origins: tuple[str, ...] = (),
    form_defaults: Mapping[str, int | str] | None = None,
) -> None:
    """Add the page, its assets and its routes to the stub's app; `media_origins`: where the video route may
    redirect the player (the configured storage), besides the stub itself; `form_defaults`: what the form
    starts with instead of the API's defaults."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(build_router(store, media_origins, form_defaults))


def build_router(
    store: Store, media_origins: tuple[str, ...] = (), form_defaults: Mapping[str, int | str] | None = None
) -> APIRouter:
    router = APIRouter(tags=["page"])
    headers = page_headers(media_origins)

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=headers)

    @router.get("/v1/studio/form")
    def form() -> dict[str, Any]:
        return form_fields(form_defaults)

    @router.get("/v1/studio/changes")
    def changes(
        since: float = Query(default=0.0, ge=0.0, le=1e11),
        after: int | None = Query(default=None, ge=0, le=2**53),
        limit: int = Query(default=500, ge=1, le=1000),
    ) -> dict[str, Any]:
        now = store.now()  # before the query (see OVERLAP_S), on the clock `updated_at` is written with
        event_id = store.latest_event_id()  # before it too: the page's stream resumes here, missing nothing
        if since == 0:  # the first load: the latest changes, newest first; older jobs stay out of the page
            rows = store.changed_since(0.0, limit)
        else:  # catching up: oldest change first, so a cut answer leaves nothing out
            rows = store.changed_after(since, -1 if after is None else after, limit)
        jobs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        size = 0
        for row in rows:
            view = job_view(store, row)
            size += len(json.dumps(view, ensure_ascii=False, default=str).encode())
            if jobs and size > MAX_ANSWER_BYTES:
                break
            jobs.append((row, view))
        more = since > 0 and (len(jobs) < len(rows) or len(rows) == limit)
        answer = {
            "cursor": max(0.0, now - OVERLAP_S),
            "after": None,
            "more": more,
            "event_id": event_id,
            "jobs": [view for _, view in jobs],
            **queue_snapshot(store, now),
        }
        if more:  # just past the last change sent: the rest comes with the next poll
            answer["cursor"], answer["after"] = jobs[-1][0]["updated_at"], jobs[-1][0]["seq"]
        return answer

    return router


def page_headers(media_origins: tuple[str, ...] = ()) -> dict[str, str]:
    """The page's scripts, styles, images and data come from this origin only: nothing inline, nothing from
    elsewhere. Videos and posters too, except where their routes redirect: the configured storage."""
    media = " ".join(("'self'", *media_origins))
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; img-src {media} data: blob:; media-src {media}; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


def form_fields(defaults: Mapping[str, int | str] | None = None) -> dict[str, Any]:
    """{field: {default, min, max, step}} for the numeric job fields, and the prompt's length limit and
    default (none unless given); `defaults` replace the API's."""
    defaults = defaults or {}
    props = JobInput.model_json_schema()["properties"]
    fields: dict[str, Any] = {}
    for name in NUMERIC_FORM_FIELDS:
        spec = props[name]
        bounds = next((s for s in spec.get("anyOf", []) if s.get("type") == "integer"), spec)
        maximum = bounds.get("maximum", bounds.get("exclusiveMaximum", 0) - 1)
        fields[name] = {
            "default": defaults.get(name, spec.get("default")),
            "min": bounds.get("minimum"),
            "max": maximum,
            "step": FIELD_STEPS.get(name, 1),
        }
    neg = next(s for s in props["negative_prompt"]["anyOf"] if s.get("type") == "string")
    fields["prompt"] = {"max_length": neg["maxLength"], "default": defaults.get("prompt")}
    return fields


def queue_snapshot(store: Store, now: float) -> dict[str, Any]:
    """The queue counts and the most recently heard workers, as the page shows them (polled, or streamed)."""
    workers, total = store.workers(MAX_WORKERS_SHOWN)
    return {
        "now": iso(now),
        "counts": store.counts(),
        "workers": [worker_row(worker, now) for worker in workers],
        "workers_total": total,
    }


def worker_row(worker: dict[str, Any], now: float) -> dict[str, Any]:
    """A worker as the page shows it: the API's view plus seconds since it was last heard from."""
    quiet_s = max(0.0, now - worker["last_seen"])  # a claim or a heartbeat
    return worker_view(worker) | {"quiet_s": round(quiet_s, 1), "quiet": quiet_s > QUIET_AFTER_S}
