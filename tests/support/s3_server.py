"""A real S3-protocol server on loopback for the tests: moto's S3 server, run as a separate process, behind a
WSGI layer that does what S3 does and moto's server does not.

moto (5.2) serves the S3 API faithfully enough for boto3, but in server mode it checks no signature unless IAM
authentication is on, and then it cannot read a presigned URL (it looks for an Authorization header); it never
checks a presigned URL's expiry, and it stores a `x-amz-checksum-sha256` or `Content-MD5` without comparing it
with the body (its own TODO). The tests are about exactly those refusals, so this layer adds them, as S3
documents them:

- AWS Signature V4, in the Authorization header or in the query (presigned): an unknown access key is
  403 `InvalidAccessKeyId`, a wrong signature 403 `SignatureDoesNotMatch`, a presigned URL past
  `X-Amz-Date + X-Amz-Expires` 403 `AccessDenied` ("Request has expired"). A request with no signature at
  all is 403 `AccessDenied` (every bucket here is private).
- `x-amz-checksum-sha256` and `Content-MD5` are compared with the body: 400 `BadDigest` on a mismatch.
- A key may be limited to one prefix (`prefix`): anything else it asks for is 403 `AccessDenied`, as an
  IAM policy on `arn:aws:s3:::bucket/prefix*` would answer.

`python tests/support/s3_server.py KEYS_JSON` prints the port it listens on, then serves until killed.
`S3Server` (below) starts it for a test module; `s3_server` is a module-scoped fixture.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest

REGION = "us-east-1"
ADMIN = {"key_id": "AKIAADMINTESTKEY0001", "secret": "admin-secret-do-not-print-0001"}
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

StartResponse = Callable[..., Any]


# ---- the WSGI layer (runs in the server process) ---------------------------------------------------------


def _error(start_response: StartResponse, status: str, code: str, message: str) -> list[bytes]:
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body.encode()]


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _signature(secret: str, scope: list[str], amz_date: str, canonical: str) -> str:
    date, region, service, _ = scope
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, "/".join(scope), hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), date), region), service), "aws4_request")
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


@dataclass
class Signed:
    key_id: str
    scope: list[str]
    amz_date: str
    signed_headers: list[str]
    signature: str
    payload_hash: str
    query: list[tuple[str, str]]
    expires_s: int | None = None


def _parse_signature(environ: dict[str, Any], query: list[tuple[str, str]]) -> Signed | None:
    params = dict(query)
    if params.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256":
        credential = params.get("X-Amz-Credential", "").split("/")
        return Signed(
            key_id=credential[0],
            scope=credential[1:],
            amz_date=params.get("X-Amz-Date", ""),
            signed_headers=params.get("X-Amz-SignedHeaders", "").split(";"),
            signature=params.get("X-Amz-Signature", ""),
            payload_hash=UNSIGNED_PAYLOAD,
            query=[(k, v) for k, v in query if k != "X-Amz-Signature"],
            expires_s=int(params.get("X-Amz-Expires", "0") or 0),
        )
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return None
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 ") :].split(","))
    credential = fields.get("Credential", "").split("/")
    return Signed(
        key_id=credential[0],
        scope=credential[1:],
        amz_date=environ.get("HTTP_X_AMZ_DATE", ""),
        signed_headers=fields.get("SignedHeaders", "").split(";"),
        signature=fields.get("Signature", ""),
        payload_hash=environ.get("HTTP_X_AMZ_CONTENT_SHA256", UNSIGNED_PAYLOAD),
        query=query,
    )


def _header(environ: dict[str, Any], name: str) -> str:
    if name == "host":
        return environ.get("HTTP_HOST", "")
    if name in ("content-type", "content-length"):
        return environ.get(name.upper().replace("-", "_"), "")
    return environ.get("HTTP_" + name.upper().replace("-", "_"), "")


class S3Rules:
    """WSGI middleware: signatures, expiry, checksums and prefix limits in front of moto's S3 app."""

    def __init__(self, app: Callable[..., Any], keys: dict[str, dict[str, Any]]) -> None:
        self.app, self.keys = app, keys

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # The path as sent (still percent-encoded: SigV4 signs it so), and the query as sent.
        raw_path = (environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ["PATH_INFO"])).split("?")[0]
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self.app(environ, start_response)  # the test harness's own calls (reset)
        signed = _parse_signature(environ, query)
        if signed is None:
            return _error(start_response, "403 Forbidden", "AccessDenied", "Anonymous access is not allowed")
        key = self.keys.get(signed.key_id)
        if key is None:
            return _error(start_response, "403 Forbidden", "InvalidAccessKeyId", "The key id does not exist")
        canonical = "\n".join(
            [
                environ["REQUEST_METHOD"],
                raw_path,
                _canonical_query(signed.query),
                "".join(f"{h}:{' '.join(_header(environ, h).split())}\n" for h in signed.signed_headers),
                ";".join(signed.signed_headers),
                signed.payload_hash,
            ]
        )
        expected = _signature(key["secret"], signed.scope, signed.amz_date, canonical)
        if not hmac.compare_digest(expected, signed.signature):
            return _error(start_response, "403 Forbidden", "SignatureDoesNotMatch", "The signature does not match")
        if signed.expires_s is not None:
            issued = dt.datetime.strptime(signed.amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
            if time.time() > issued.timestamp() + signed.expires_s:
                return _error(start_response, "403 Forbidden", "AccessDenied", "Request has expired")
        prefix = key.get("prefix")
        if prefix is not None and not unquote(raw_path).lstrip("/").startswith(prefix):
            return _error(start_response, "403 Forbidden", "AccessDenied", "Access Denied")
        body = self._body(environ)
        refusal = self._checksum_refusal(environ, body)
        if refusal:
            return _error(start_response, "400 Bad Request", "BadDigest", refusal)
        return self.app(environ, start_response)

    @staticmethod
    def _body(environ: dict[str, Any]) -> bytes:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        return body

    @staticmethod
    def _checksum_refusal(environ: dict[str, Any], body: bytes) -> str | None:
        if "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", ""):
            return None  # a trailer carries the checksum; moto decodes those bodies itself
        sha = environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
        if sha and sha != base64.b64encode(hashlib.sha256(body).digest()).decode():
            return "The SHA256 you specified did not match the calculated checksum."
        md5 = environ.get("HTTP_CONTENT_MD5")
        if md5 and md5 != base64.b64encode(hashlib.md5(body).digest()).decode():
            return "The Content-MD5 you specified did not match what we received."
        return None


def main(keys_json: str) -> None:
    from moto.moto_server.werkzeug_app import create_backend_app
    from werkzeug.serving import make_server

    keys = {entry["key_id"]: entry for entry in [ADMIN, *json.loads(keys_json)]}
    app = S3Rules(create_backend_app("s3"), keys)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()


# ---- the test side ---------------------------------------------------------------------------------------


@dataclass
class S3Server:
    """The server process; `client()` is a boto3 client with the admin key (tests set up buckets with it)."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(self.keys)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError("the S3 test server did not start")
        self.port = int(line)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def env(self, bucket: str, key: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """The storage variables of a worker or a stub that uses this server with `key` (else the admin's)."""
        key = key or ADMIN
        return {
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": bucket,
            "AWS_ACCESS_KEY_ID": key["key_id"],
            "AWS_SECRET_ACCESS_KEY": key["secret"],
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.url,
            "S3_ADDRESSING_STYLE": "path",
            **extra,
        }

    def client(self, key: dict[str, str] | None = None) -> Any:
        import boto3
        from botocore.config import Config

        key = key or ADMIN
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=key["key_id"],
            aws_secret_access_key=key["secret"],
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """One S3 server per test module (a restricted key, `PREFIX_KEY`, writes only under `fastwan/`)."""
    server = S3Server(keys=[PREFIX_KEY]).start()
    yield server
    server.stop()


PREFIX_KEY = {"key_id": "AKIAPREFIXONLY000002", "secret": "prefix-only-secret-0002", "prefix": "videos-bucket/fastwan/"}


def object_url(server: S3Server, bucket: str, key: str) -> str:
    return f"{server.url}/{bucket}/{quote(key)}"


def path_of(url: str) -> str:
    return urlsplit(url).path


if __name__ == "__main__":
    main(sys.argv[1])
