"""A completed job's result is checked before it is stored, whoever sends it (a buffer worker, the dispatcher's
queue-mode worker): it is shown to every client, played by the page and followed by the video route.

- It is the protocol's result (`schema.JobResult`), with no invalid Unicode or non-finite number in it.
- It is about this job (`job_id`), and its `storage_key` names this job's own object:
  `<STORAGE_PREFIX>videos/<job_id>/<sha256>.mp4`, the `sha256` being the result's own.
- Its `video_url` points at that object, on an allowed origin: the stub's own (STUB_PUBLIC_URL) or the
  configured storage's (`StorageOrigins`); a `file://` URL (local storage) is a path the stub never follows.
- Its numbers are within the protocol's bounds (docs/protocol.md, "The result"): sizes, frames and fps as a
  job may ask, a seed below 2^63, a byte count a JavaScript number holds exactly, finite, bounded timings.

`StorageOrigins` is the one notion of "where videos may live": the page's Content-Security-Policy and the
video route's redirect use it too. A storage backend that hands out its own URLs adds its origins there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from worker_app_fastwan.core.schema import (
    MAX_FRAMES,
    MAX_SEED,
    MAX_SIDE,
    MIN_FRAMES,
    MIN_SIDE,
    JobResult,
    poster_key,
)
from worker_app_fastwan.edge.body_guard import BodyRejected, check_json_value

MAX_URL_CHARS = 4096
MAX_BYTES = 2**53 - 1  # the page reads numbers as JavaScript does: larger integers are not exact there
MAX_TIMING_S = 1e7  # about 4 months: any real timing, and far inside a float's exact range
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ResultRefused(ValueError):
    """The result breaks a rule; str() names the field."""


@dataclass(frozen=True)
class StorageOrigins:
    """Origins (`scheme://host[:port]`) a result's video may live on; a host `*.example.com` is any subdomain."""

    origins: tuple[str, ...]

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            return False
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return any(_origin_matches(origin, parts.scheme, parts.hostname.lower(), port) for origin in self.origins)

    def csp_sources(self) -> tuple[str, ...]:
        """The same origins as Content-Security-Policy sources (the page's player may be redirected there)."""
        return self.origins


def _origin_matches(origin: str, scheme: str, host: str, port: int) -> bool:
    allowed = urlsplit(origin)
    if allowed.scheme != scheme:
        return False
    allowed_host = (allowed.hostname or "").lower()
    # urlsplit keeps "*" in the host; a wildcard matches one or more labels in front of the rest.
    if allowed_host.startswith("*."):
        host_ok = host.endswith(allowed_host[1:]) and len(host) > len(allowed_host) - 1
    else:
        host_ok = host == allowed_host
    allowed_port = allowed.port or (443 if scheme == "https" else 80)
    return host_ok and port == allowed_port


@dataclass(frozen=True)
class ResultRules:
    storage: StorageOrigins
    key_prefix: str = ""

    def check(self, job_id: str, result: Any, *, on_target: bool = False) -> dict[str, Any]:
        """The result as it is stored (the protocol's fields only); raises `ResultRefused` naming the field.

        `on_target`: its `storage_key` is one of the stub's own output targets for this job (v1.2), whose
        object the stub reads back itself (`output_check.py`); its URLs must then be the stub's own routes."""
        if not isinstance(result, dict):
            raise ResultRefused("result: must be a JSON object")
        try:
            check_json_value(result)
        except BodyRejected as exc:
            raise ResultRefused(f"result.{exc.message}") from None
        try:
            parsed = JobResult.model_validate(result)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ResultRefused(f"result.{where}: {err['msg']}") from None
        if parsed.job_id != job_id:
            raise ResultRefused(f"result.job_id: is not this job's id ({job_id})")
        _check_numbers(parsed)
        if not SHA256.match(parsed.sha256):
            raise ResultRefused("result.sha256: must be 64 lowercase hexadecimal digits")
        if on_target:
            self._check_own_route(parsed.video_url, f"/v1/jobs/{job_id}/video", "video_url")
            if parsed.poster_url is not None:
                self._check_own_route(parsed.poster_url, f"/v1/jobs/{job_id}/poster", "poster_url")
            return parsed.model_dump(mode="json", exclude_none=True)  # no poster: as a v1.1 result
        own_key = f"{self.key_prefix}videos/{job_id}/{parsed.sha256}.mp4"
        if parsed.storage_key != own_key:
            raise ResultRefused(f"result.storage_key: must be this job's own object, {own_key}")
        self._check_url(parsed.video_url, own_key, "video_url")
        if parsed.poster_key is not None or parsed.poster_url is not None:
            own_poster = poster_key(own_key)
            if parsed.poster_key != own_poster or parsed.poster_url is None:
                raise ResultRefused(f"result.poster_key: must be the video's poster, {own_poster}, with its poster_url")
            self._check_url(parsed.poster_url, own_poster, "poster_url")
        return parsed.model_dump(mode="json", exclude_none=True)  # no poster: as a v1.1 result

    def _check_own_route(self, url: str, path: str, field: str) -> None:
        """A URL on the stub's own origin (the first of `storage.origins`), at exactly `path`."""
        parts = urlsplit(url)
        if len(url) > MAX_URL_CHARS or not StorageOrigins(self.storage.origins[:1]).allows(url) or parts.path != path:
            raise ResultRefused(f"result.{field}: must be the stub's own {path} (the output target's serve_url)")

    def _check_url(self, url: str, key: str, field: str) -> None:
        if len(url) > MAX_URL_CHARS:
            raise ResultRefused(f"result.{field}: longer than {MAX_URL_CHARS} characters")
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ResultRefused(f"result.{field}: a file URL must name no host")
        elif parts.scheme in ("http", "https"):
            if not self.storage.allows(url):
                # The origin is the sender's to know; a query string may hold a token, so it is never echoed.
                shown = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
                raise ResultRefused(
                    f"result.{field}: {shown} is not an allowed storage origin (STORAGE_ORIGINS or the stub's own)"
                )
        else:
            raise ResultRefused(f"result.{field}: must be an http(s) or file URL")
        if not unquote(parts.path).endswith("/" + key):
            key_field = "storage_key" if field == "video_url" else "poster_key"
            raise ResultRefused(f"result.{field}: must point at the result's {key_field}")


def _check_numbers(result: JobResult) -> None:
    bounds = {
        "width": (MIN_SIDE, MAX_SIDE),
        "height": (MIN_SIDE, MAX_SIDE),
        "num_frames": (MIN_FRAMES, MAX_FRAMES),
        "fps": (1, 60),
        "seed": (0, MAX_SEED - 1),
        "bytes": (0, MAX_BYTES),
    }
    for name, (low, high) in bounds.items():
        value = getattr(result, name)
        if not low <= value <= high:
            raise ResultRefused(f"result.{name}: must be {low}-{high} (got {value})")
    for name, value in result.timings.model_dump().items():
        if not (math.isfinite(value) and 0 <= value <= MAX_TIMING_S):
            raise ResultRefused(f"result.timings.{name}: must be 0-{MAX_TIMING_S:g} seconds (got {value})")


def refused_error(reason: str, code: str = "internal") -> dict[str, Any]:
    """The job error a refused result becomes: retryable, since another worker may well store it properly."""
    message = f"the worker's result was refused by the orchestrator: {reason}"
    return {"code": code, "message": message[:2000], "retryable": True}


def rules_from_settings(public_url: str, storage_origins: tuple[str, ...], key_prefix: str) -> ResultRules:
    """The stub's own origin (where workers reach it) and the configured storage's."""
    parts = urlsplit(public_url)
    own = f"{parts.scheme}://{parts.netloc}".lower()
    return ResultRules(StorageOrigins((own, *storage_origins)), key_prefix)
