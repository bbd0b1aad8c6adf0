"""The job statuses, the names the store shares with its callers, and how JSON columns are written and read.

The tables themselves are Alembic's (`migrations/versions/`, applied by `migrate.upgrade`): one revision per
change, so a database made by any earlier stub is brought up to date where it stands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator_stub.db.engine import UnencodableText, checked

STATUSES = ("queued", "claimed", "running", "completed", "failed")
HELD = ("claimed", "running")
FINAL = ("completed", "failed")
HELD_SQL = "('claimed', 'running')"
# The worker id the dispatcher holds jobs under (here, not in dispatcher.py: the store needs it too).
DISPATCHER_ID = "salad-dispatcher"

__all__ = ["DISPATCHER_ID", "FINAL", "HELD", "HELD_SQL", "STATUSES", "Queued", "UnencodableText", "dumps", "loads"]


@dataclass(frozen=True)
class Queued:
    """A job that became claimable (submitted or requeued): what a waiting claim needs to know whether it fits."""

    job_id: str
    mode: str
    width: int
    height: int
    num_frames: int

    def payload(self) -> str:
        return json.dumps([self.job_id, self.mode, self.width, self.height, self.num_frames], separators=(",", ":"))

    @classmethod
    def from_payload(cls, text: str) -> Queued:
        job_id, mode, width, height, num_frames = json.loads(text)
        return cls(str(job_id), str(mode), int(width), int(height), int(num_frames))


def dumps(value: Any) -> str | None:
    """Compact JSON text, non-ASCII as itself (an emoji is 4 bytes, not a 12-character escape); refuses what
    cannot be encoded (`UnencodableText`) and numbers JSON cannot carry (NaN, infinities)."""
    if value is None:
        return None
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise UnencodableText("a number is not finite") from None
    return checked(text)


def loads(value: str | None) -> Any:
    if value is None:
        return None
    data = json.loads(value)
    # Rows written before `dumps` refused lone surrogates hold them as ASCII escapes: shown as U+FFFD, not a 500.
    return _mend(data) if "\\ud" in value.lower() else data


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if not _is_text(value) else value
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mend(v) for v in value]
    return value


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
