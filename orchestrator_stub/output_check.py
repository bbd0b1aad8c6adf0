"""A result on an output target (protocol v1.2) is accepted only once the stored object matches it.

The worker reports `storage_key`, `bytes` and `sha256`; when the key is one of this job's targets, the stub
reads the object back (`OutputStore.verify`): a missing object, another size or another SHA-256 refuse the
result. A result on a target of another attempt is refused too. A result not on any target of the stub's
(a v1.1 worker storing with its own credentials) passes as before. A poster that is not where the target
said, or not stored, is left out of the result rather than shown broken.
"""

from __future__ import annotations

from typing import Any

from orchestrator_stub.db import Store
from orchestrator_stub.outputs import OutputStore
from orchestrator_stub.results import ResultRules
from worker_app_fastwan.core.protocol import OutputTarget


class OutputMismatch(Exception):
    """The result does not describe what its output target holds; str() says how, for the job's error."""


def hand_out(
    store: Store, outputs: OutputStore, job_id: str, attempt: int, delivery: int | None = None
) -> OutputTarget:
    """A new output target for this attempt (or dispatcher delivery), recorded before anyone can use it."""
    issued = outputs.issue(job_id, attempt, delivery)
    poster = issued.target.poster.storage_key if issued.target.poster else None
    store.add_output_target(job_id, attempt, issued.target.video.storage_key, poster, issued.expires_at)
    return issued.target


def check_result(
    store: Store, outputs: OutputStore, job_id: str, attempt: int | None, result: dict[str, Any]
) -> dict[str, Any]:
    """`result`, checked against its output target (and without a poster that is not there); raises
    OutputMismatch, or `StorageUnavailable` when the store cannot be asked."""
    key = result.get("storage_key")
    target = store.output_target(job_id, key) if isinstance(key, str) else None
    if target is None:
        return result
    if attempt is not None and store.current_attempt(job_id) != attempt:
        return result  # a late report: the status itself is refused (409) without reading anything
    if attempt is not None and target["attempt"] != attempt:
        raise OutputMismatch(f"storage_key is the output target of attempt {target['attempt']}, not {attempt}'s")
    if target["verified_at"] is None:
        video_key = str(target["video_key"])
        problem = outputs.verify(video_key, int(result["bytes"]), str(result["sha256"]))
        if problem:
            raise OutputMismatch(problem)
        store.mark_target_verified(video_key)
    poster = result.get("poster_key")
    if poster is not None and (poster != target["poster_key"] or not outputs.exists(poster)):
        return {**result, "poster_key": None, "poster_url": None}
    return result


def check_reported(
    store: Store,
    rules: ResultRules,
    outputs: OutputStore | None,
    job_id: str,
    attempt: int | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """A reported result as it is stored (a worker's status or the dispatcher's answer): checked by the rules
    (`results.py`) and, when it is on one of the stub's output targets, against the object there. Raises
    `ResultRefused`, `OutputMismatch`, or `StorageUnavailable` when the store cannot be asked."""
    key = result.get("storage_key")
    on_target = outputs is not None and isinstance(key, str) and store.output_target(job_id, key) is not None
    result = rules.check(job_id, result, on_target=on_target)
    if outputs is not None and on_target:
        result = check_result(store, outputs, job_id, attempt, result)
    return result
