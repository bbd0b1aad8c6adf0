"""S3 storage against a real S3-protocol server on loopback (moto's server in its own process, behind the
signature, expiry and checksum rules of tests/support/s3_server.py), and doctor's probe of it."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.s3_server import ADMIN, PREFIX_KEY, S3Server, s3_server  # noqa: F401 - the fixture

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.doctor.checks import storage_check
from worker_app_fastwan.doctor.report import Status
from worker_app_fastwan.job.s3_storage import S3Storage
from worker_app_fastwan.job.storage import make_storage

BUCKET = "videos-bucket"
MIB = 1 << 20
FAST = {"retry_wait_s": 0.001, "retry_max_s": 0.01}


@pytest.fixture(scope="module")
def server(s3_server: S3Server) -> S3Server:  # noqa: F811
    s3_server.client().create_bucket(Bucket=BUCKET)
    return s3_server


def settings(server: S3Server, key: dict[str, str] | None = None, **extra: Any) -> Any:
    return load_settings(None, **{**server.env(BUCKET, key), **extra})


def storage(server: S3Server, key: dict[str, str] | None = None, **options: Any) -> S3Storage:
    prefix = options.pop("prefix", "fastwan/")
    return S3Storage.from_settings(settings(server, key, S3_PREFIX=prefix), **{**FAST, **options})


def write(path: Path, size: int, seed: int = 0) -> str:
    data = bytes((i * 31 + seed) % 251 for i in range(min(size, 1 << 16))) * (size // (1 << 16) + 1)
    path.write_bytes(data[:size])
    return hashlib.sha256(data[:size]).hexdigest()


def fetch(server: S3Server, key: str) -> bytes:
    return server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_upload_is_content_addressed_checksummed_with_its_poster_and_a_url_that_works(server, tmp_path):
    sha = write(tmp_path / "v.mp4", 3000)
    (tmp_path / "v.jpg").write_bytes(b"\xff\xd8poster\xff\xd9")
    stored = storage(server).upload(tmp_path / "v.mp4", "job:1", sha, poster=tmp_path / "v.jpg")

    assert stored.key == f"fastwan/videos/job:1/{sha}.mp4" and stored.bytes == 3000
    assert stored.poster_key == f"fastwan/videos/job:1/{sha}.jpg"
    head = server.client().head_object(Bucket=BUCKET, Key=stored.key, ChecksumMode="ENABLED")
    assert head["ContentType"] == "video/mp4" and head["Metadata"] == {"job-id": "job:1", "sha256": sha}
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(sha)).decode()
    assert fetch(server, stored.poster_key) == b"\xff\xd8poster\xff\xd9"
    got = httpx.get(stored.url)  # the presigned GET: no credentials needed
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
    assert httpx.get(stored.poster_url).content == b"\xff\xd8poster\xff\xd9"


def test_presigned_get_expires(server, tmp_path):
    sha = write(tmp_path / "v.mp4", 100)
    store = storage(server)
    store.upload(tmp_path / "v.mp4", "expiring", sha)
    key = f"fastwan/videos/expiring/{sha}.mp4"
    store.url_ttl_s = 1
    short = store.url_for(key)
    store.url_ttl_s = 120
    assert httpx.get(store.url_for(key)).status_code == 200
    time.sleep(2.1)  # SigV4 dates have whole seconds
    late = httpx.get(short)
    assert late.status_code == 403 and "Request has expired" in late.text


def test_a_public_base_url_makes_plain_urls(server, tmp_path):
    sha = write(tmp_path / "v.mp4", 10)
    store = storage(server, public_base_url="https://cdn.example.com/v/")
    stored = store.upload(tmp_path / "v.mp4", "pub", sha)
    assert stored.url == f"https://cdn.example.com/v/fastwan/videos/pub/{sha}.mp4"


def test_large_files_go_multipart_in_parts_the_store_checks(server, tmp_path):
    sha = write(tmp_path / "big.mp4", 11 * MIB + 5)
    store = storage(server, multipart_threshold=6 * MIB, part_size=5 * MIB)
    stored = store.upload(tmp_path / "big.mp4", "big", sha)
    assert hashlib.sha256(fetch(server, stored.key)).hexdigest() == sha
    etag = server.client().head_object(Bucket=BUCKET, Key=stored.key)["ETag"]
    assert etag.strip('"').endswith("-3"), "three parts"


def test_a_failed_multipart_upload_resumes_without_sending_finished_parts_again(server, tmp_path):
    from botocore.exceptions import ConnectionClosedError

    sha = write(tmp_path / "big.mp4", 16 * MIB, seed=3)
    store = storage(server, multipart_threshold=6 * MIB, part_size=5 * MIB, max_parallel_parts=1)
    sent: list[int] = []

    def cut_part_3_once(params: dict[str, Any], **_: Any) -> None:
        sent.append(params["PartNumber"])
        if params["PartNumber"] == 3 and sent.count(3) == 1:
            raise ConnectionClosedError(endpoint_url=server.url)

    store._client.meta.events.register("provide-client-params.s3.UploadPart", cut_part_3_once)
    stored = store.upload(tmp_path / "big.mp4", "resumed", sha)

    # Part 4 went out while part 3 failed; the second try sends part 3 alone, the store holding the others.
    assert sorted(sent) == [1, 2, 3, 3, 4] and sent[-1] == 3, sent
    assert hashlib.sha256(fetch(server, stored.key)).hexdigest() == sha


def test_the_store_refuses_a_body_that_does_not_match_its_checksum(server, tmp_path):
    write(tmp_path / "v.mp4", 500)
    wrong = hashlib.sha256(b"another video").hexdigest()
    with pytest.raises(JobFailure) as caught:
        storage(server).upload(tmp_path / "v.mp4", "corrupt", wrong)
    assert caught.value.code is ErrorCode.upload_failed and caught.value.retryable
    assert "BadDigest (HTTP 400)" in caught.value.message
    listed = server.client().list_objects_v2(Bucket=BUCKET, Prefix="fastwan/videos/corrupt/")
    assert listed.get("KeyCount", 0) == 0, "nothing was stored"


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ({"key_id": ADMIN["key_id"], "secret": "not-the-secret-7311"}, "SignatureDoesNotMatch (HTTP 403)"),
        ({"key_id": "AKIAUNKNOWN000000009", "secret": "not-the-secret-7311"}, "InvalidAccessKeyId (HTTP 403)"),
    ],
)
def test_a_wrong_key_is_a_403_upload_failed_without_the_secret(server, tmp_path, key, code):
    sha = write(tmp_path / "v.mp4", 50)
    with pytest.raises(JobFailure) as caught:
        storage(server, key).upload(tmp_path / "v.mp4", "denied", sha)
    assert caught.value.code is ErrorCode.upload_failed and caught.value.retryable
    assert code in caught.value.message and "not-the-secret" not in caught.value.message


def test_a_missing_bucket_is_upload_failed(server, tmp_path):
    sha = write(tmp_path / "v.mp4", 50)
    store = S3Storage.from_settings(settings(server, S3_BUCKET="no-such-bucket"), **FAST)
    with pytest.raises(JobFailure) as caught:
        store.upload(tmp_path / "v.mp4", "nobucket", sha)
    assert "NoSuchBucket (HTTP 404)" in caught.value.message and caught.value.retryable


def test_an_endpoint_that_is_down_is_retryable(tmp_path):
    from support.http_servers import free_port

    sha = write(tmp_path / "v.mp4", 50)
    env = S3Server(port=free_port()).env(BUCKET)
    store = S3Storage.from_settings(load_settings(None, **env), attempts=2, **FAST)
    store._client.meta.config.retries = {"max_attempts": 1}
    start = time.monotonic()
    with pytest.raises(JobFailure) as caught:
        store.upload(tmp_path / "v.mp4", "down", sha)
    assert caught.value.retryable and "EndpointConnectionError" in caught.value.message
    assert time.monotonic() - start < 30


def test_a_key_limited_to_its_prefix_uploads_there_and_nowhere_else(server, tmp_path):
    sha = write(tmp_path / "v.mp4", 70)
    stored = storage(server, PREFIX_KEY).upload(tmp_path / "v.mp4", "least", sha)
    assert stored.key.startswith("fastwan/")
    with pytest.raises(JobFailure) as caught:
        storage(server, PREFIX_KEY, prefix="elsewhere/").upload(tmp_path / "v.mp4", "least", sha)
    assert "AccessDenied (HTTP 403)" in caught.value.message


def test_auto_picks_s3_for_a_bucket_and_make_storage_builds_it(server, tmp_path):
    env = {k: v for k, v in server.env(BUCKET).items() if k != "STORAGE_BACKEND"}
    chosen = load_settings(None, **env)
    assert chosen.storage == "s3"
    assert isinstance(make_storage(chosen), S3Storage)
    assert load_settings(None, LOCAL_OUTPUT_DIR=tmp_path).storage == "local"
    assert ADMIN["secret"] not in repr(chosen) and ADMIN["secret"] not in str(chosen.summary())


# ---- doctor ------------------------------------------------------------------------------------------------


def test_doctor_writes_and_deletes_a_probe_with_a_least_privilege_key(server):
    check = storage_check(settings(server, PREFIX_KEY, S3_PREFIX="fastwan/"))
    assert check.status is Status.ok, check.line()
    assert "wrote and deleted fastwan/doctor/" in check.detail
    listed = server.client().list_objects_v2(Bucket=BUCKET, Prefix="fastwan/doctor/")
    assert listed.get("KeyCount", 0) == 0, "the probe is gone"


def test_doctor_names_a_refusal_without_the_secret(server):
    bad = {"key_id": PREFIX_KEY["key_id"], "secret": "wrong-secret-5521"}
    check = storage_check(settings(server, bad, S3_PREFIX="fastwan/"))
    assert check.status is Status.fail and "SignatureDoesNotMatch" in check.detail
    assert "wrong-secret-5521" not in check.line() and PREFIX_KEY["key_id"] in check.detail
    outside = storage_check(settings(server, PREFIX_KEY, S3_PREFIX="other/"))
    assert outside.status is Status.fail and "AccessDenied" in outside.detail


def test_doctor_in_a_subprocess_prints_the_s3_line(server, tmp_path):
    import subprocess
    import sys

    env = {
        "PATH": "/usr/bin:/bin",
        "PIPELINE_BACKEND": "tiny",
        "STATE_DIR": str(tmp_path / "state"),
        **settings_env(server),
    }
    out = subprocess.run(
        [sys.executable, "-m", "worker_app_fastwan", "doctor"], env=env, capture_output=True, text=True, timeout=120
    )
    line = next(x for x in out.stdout.splitlines() if "storage:" in x)
    assert line.startswith("✓ storage: s3: bucket videos-bucket"), out.stdout + out.stderr
    assert ADMIN["secret"] not in out.stdout + out.stderr


def settings_env(server: S3Server) -> dict[str, str]:
    return {**server.env(BUCKET), "S3_PREFIX": "fastwan/"}
