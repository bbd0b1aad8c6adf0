"""Storage against b2sdk's own in-memory B2 (RawSimulator) and a local folder."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from urllib.request import url2pathname

import pytest
from b2sdk.v2 import B2Api, RawSimulator
from support.b2 import FlakySimulator, download, new_api

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.job.storage import B2Storage, LocalStorage, StorageError, make_storage, storage_key

FAST_RETRY = {"retry_wait_s": 0.001, "retry_max_s": 0.01}


def buckets(max_upload_workers: int = 10) -> tuple[B2Api, FlakySimulator, str]:
    api, key_id, key = new_api(max_upload_workers)
    api.authorize_account(realm="production", application_key_id=key_id, application_key=key)
    api.create_bucket("private-bucket", "allPrivate")
    api.create_bucket("public-bucket", "allPublic")
    return api, api.session.raw_api, key


@pytest.fixture
def b2() -> tuple[B2Api, FlakySimulator, str]:
    return buckets()


def write(path: Path, size: int) -> bytes:
    data = bytes((i * 7 + size) % 256 for i in range(size))
    path.write_bytes(data)
    return data


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def latest_names(api: B2Api, bucket_name: str) -> list[str]:
    return [fv.file_name for fv, _ in api.get_bucket_by_name(bucket_name).ls(recursive=True, latest_only=True)]


H = "ab" * 32


def test_storage_key_names_the_job_and_the_content() -> None:
    assert storage_key("job-1", H, "") == f"videos/job-1/{H}.mp4"
    assert storage_key("a:b.c", H, "env/prod/") == f"env/prod/videos/a:b.c/{H}.mp4"
    for job_id, digest in (("../x", H), ("..", H), (".", H), ("j", "../" + H[3:]), ("j", H.upper()), ("j", "ab")):
        with pytest.raises(ValueError):
            storage_key(job_id, digest, "")


def test_private_upload_round_trips_with_key_type_info_and_signed_url(b2, tmp_path: Path) -> None:
    api, sim, _ = b2
    data = write(tmp_path / "v.mp4", 150)
    storage = B2Storage(api, "private-bucket", prefix="p/", url_ttl_s=3600, **FAST_RETRY)

    stored = storage.upload(tmp_path / "v.mp4", "job-1", sha(tmp_path / "v.mp4"))

    assert stored.key == f"p/videos/job-1/{hashlib.sha256(data).hexdigest()}.mp4" and stored.bytes == 150
    info = api.get_bucket_by_name("private-bucket").get_file_info_by_name(stored.key)
    assert info.content_type == "video/mp4"
    assert info.file_info["job_id"] == "job-1" and info.file_info["sha256"] == hashlib.sha256(data).hexdigest()
    assert download(api, "private-bucket", stored.key) == data
    base, _, query = stored.url.partition("?")
    assert base == api.get_download_url_for_file_name("private-bucket", stored.key)
    token = parse_qs(query)["Authorization"][0]
    assert stored.key in token and token.endswith("_3600")  # the simulator's token names prefix and TTL
    assert +sim.calls == Counter(upload_file=1)


def test_public_bucket_gets_plain_download_url(b2, tmp_path: Path) -> None:
    api, _, _ = b2
    write(tmp_path / "v.mp4", 50)
    stored = B2Storage(api, "public-bucket", **FAST_RETRY).upload(tmp_path / "v.mp4", "job-2", sha(tmp_path / "v.mp4"))
    key = f"videos/job-2/{sha(tmp_path / 'v.mp4')}.mp4"
    assert stored.key == key and stored.url == api.get_download_url_for_file_name("public-bucket", key)
    assert "Authorization" not in stored.url


def test_large_file_goes_multipart_and_round_trips(b2, tmp_path: Path) -> None:
    api, sim, _ = b2
    size = RawSimulator.MIN_PART_SIZE * 5 + 17
    data = write(tmp_path / "v.mp4", size)
    stored = B2Storage(api, "private-bucket", **FAST_RETRY).upload(tmp_path / "v.mp4", "big", sha(tmp_path / "v.mp4"))
    assert sim.calls["upload_part"] >= 2 and sim.calls["upload_file"] == 0
    assert stored.bytes == size
    assert download(api, "private-bucket", stored.key) == data


def test_a_late_attempt_never_overwrites_the_reported_video(b2, tmp_path: Path) -> None:
    api, _, _ = b2
    storage = B2Storage(api, "private-bucket", **FAST_RETRY)
    first = write(tmp_path / "a.mp4", 100)
    write(tmp_path / "b.mp4", 120)
    reported = storage.upload(tmp_path / "a.mp4", "same", sha(tmp_path / "a.mp4"))
    late = storage.upload(tmp_path / "b.mp4", "same", sha(tmp_path / "b.mp4"))
    assert late.key != reported.key
    assert sorted(latest_names(api, "private-bucket")) == sorted([reported.key, late.key])
    assert download(api, "private-bucket", reported.key) == first  # still what was reported


def test_transient_failures_beyond_b2sdk_retries_are_retried(b2, tmp_path: Path) -> None:
    api, sim, _ = b2
    data = write(tmp_path / "v.mp4", 100)
    sim.fail_next["upload_file"] = 6  # b2sdk itself tries 5 times per call; the 6th failure reaches us
    stored = B2Storage(api, "private-bucket", attempts=3, **FAST_RETRY).upload(
        tmp_path / "v.mp4", "flaky", sha(tmp_path / "v.mp4")
    )
    assert sim.calls["upload_file"] == 7
    assert download(api, "private-bucket", stored.key) == data


def test_multipart_retry_resumes_and_round_trips(tmp_path: Path) -> None:
    # One part at a time: with parts in flight side by side, one stored just as its attempt failed is sent
    # again, and the count below would depend on thread timing.
    api, sim, _ = buckets(max_upload_workers=1)
    data = write(tmp_path / "v.mp4", RawSimulator.MIN_PART_SIZE * 4)
    sim.fail_next["upload_part"] = 12
    stored = B2Storage(api, "private-bucket", attempts=4, **FAST_RETRY).upload(
        tmp_path / "v.mp4", "flaky-big", sha(tmp_path / "v.mp4")
    )
    bucket = api.get_bucket_by_name("private-bucket")
    assert download(api, "private-bucket", stored.key) == data
    assert list(bucket.list_unfinished_large_files()) == []
    assert sim.calls["start_large_file"] == 1  # the retry resumed b2sdk's unfinished large file
    assert sim.calls["upload_part"] == 4 + 12
    assert latest_names(api, "private-bucket") == [f"videos/flaky-big/{hashlib.sha256(data).hexdigest()}.mp4"]


def test_permanent_failure_is_upload_failed_retryable_without_secrets(b2, tmp_path: Path, caplog) -> None:
    api, sim, key = b2
    write(tmp_path / "v.mp4", 100)
    sim.fail_next["upload_file"] = 10**6
    storage = B2Storage(api, "private-bucket", attempts=2, **FAST_RETRY)
    with caplog.at_level(logging.DEBUG), pytest.raises(JobFailure) as info:
        storage.upload(tmp_path / "v.mp4", "doomed", sha(tmp_path / "v.mp4"))
    assert info.value.code is ErrorCode.upload_failed and info.value.retryable
    assert f"videos/doomed/{sha(tmp_path / 'v.mp4')}.mp4" in info.value.message
    assert sim.calls["upload_file"] == 2 * 5
    for text in (str(info.value), repr(storage), str(storage), caplog.text):
        assert key not in text


def test_from_settings_authorizes_and_never_shows_the_app_key(tmp_path: Path, caplog) -> None:
    api, key_id, key = new_api()
    settings = load_settings(None, B2_KEY_ID=key_id, B2_APP_KEY=key, B2_BUCKET_NAME="videos-bkt", B2_PREFIX="x/")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(StorageError) as missing:  # the bucket does not exist yet
            B2Storage.from_settings(settings, api=api)
        api.create_bucket("videos-bkt", "allPrivate")
        storage = B2Storage.from_settings(settings, api=api)
        write(tmp_path / "v.mp4", 10)
        stored = storage.upload(tmp_path / "v.mp4", "j", sha(tmp_path / "v.mp4"))
    assert stored.key == f"x/videos/j/{sha(tmp_path / 'v.mp4')}.mp4" and "Authorization=" in stored.url
    for text in (str(missing.value), repr(storage), caplog.text):
        assert key not in text


def test_bad_app_key_is_a_storage_error_without_the_key() -> None:
    api, key_id, _ = new_api()
    settings = load_settings(None, B2_KEY_ID=key_id, B2_APP_KEY="not-the-key-s3cr3t", B2_BUCKET_NAME="b")
    with pytest.raises(StorageError) as info:
        B2Storage.from_settings(settings, api=api)
    assert "s3cr3t" not in str(info.value) and key_id in str(info.value)


def test_local_storage_keeps_each_attempt_and_returns_file_urls(tmp_path: Path) -> None:
    src = tmp_path / "work" / "out.mp4"
    src.parent.mkdir()
    first = write(src, 1000)
    storage = make_storage(load_settings(None, STORAGE_BACKEND="local", LOCAL_OUTPUT_DIR=tmp_path / "outputs"))
    assert isinstance(storage, LocalStorage)

    stored = storage.upload(src, "job-9", sha(src))
    write(src, 500)
    late = storage.upload(src, "job-9", sha(src))
    again = storage.upload(src, "job-9", sha(src))  # the same content: the same key, harmlessly

    assert stored.key == f"videos/job-9/{hashlib.sha256(first).hexdigest()}.mp4" and stored.bytes == 1000
    assert late.key == again.key != stored.key and late.bytes == 500
    for obj, data in ((stored, first), (late, src.read_bytes())):
        parts = urlsplit(obj.url)
        assert parts.scheme == "file" and Path(url2pathname(parts.path)).read_bytes() == data
    names = sorted(p.name for p in (tmp_path / "outputs" / "videos" / "job-9").iterdir())
    assert names == sorted({Path(stored.key).name, Path(late.key).name})  # no .part left over
    assert src.exists()  # the caller's file is left in place


def test_local_storage_fsyncs_the_file_and_its_folders_before_returning(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "out.mp4"
    write(src, 300)
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    out = tmp_path / "outputs"
    out.mkdir()
    stored = LocalStorage(out).upload(src, "job-1", sha(src))

    job_dir = out / "videos" / "job-1"
    part = [p for p in synced if p.endswith(".part")]
    assert len(part) == 1 and Path(part[0]).parent == job_dir  # the data, before the rename
    # the rename (the job's folder), the new job folder (videos/) and the new videos/ folder (outputs/)
    assert {str(job_dir), str(out / "videos"), str(out)} <= set(synced)
    assert synced.index(part[0]) < synced.index(str(job_dir))
    assert (out / stored.key).read_bytes() == src.read_bytes()
