"""Storage against b2sdk's own in-memory B2 (RawSimulator) and a local folder."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from urllib.request import url2pathname

import pytest
from b2sdk.v2 import B2Api, RawSimulator
from helpers_b2 import FlakySimulator, download, new_api

from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.schema import ErrorCode
from worker_app_fastwan.settings import load_settings
from worker_app_fastwan.storage import B2Storage, LocalStorage, StorageError, make_storage, storage_key

FAST_RETRY = {"retry_wait_s": 0.001, "retry_max_s": 0.01}


@pytest.fixture
def b2() -> tuple[B2Api, FlakySimulator, str]:
    api, key_id, key = new_api()
    api.authorize_account(realm="production", application_key_id=key_id, application_key=key)
    api.create_bucket("private-bucket", "allPrivate")
    api.create_bucket("public-bucket", "allPublic")
    return api, api.session.raw_api, key


def write(path: Path, size: int) -> bytes:
    data = bytes((i * 7 + size) % 256 for i in range(size))
    path.write_bytes(data)
    return data


def latest_names(api: B2Api, bucket_name: str) -> list[str]:
    return [fv.file_name for fv, _ in api.get_bucket_by_name(bucket_name).ls(recursive=True, latest_only=True)]


def test_storage_key_depends_only_on_job_id() -> None:
    assert storage_key("job-1", "") == "videos/job-1.mp4"
    assert storage_key("a:b.c", "env/prod/") == "env/prod/videos/a:b.c.mp4"
    with pytest.raises(ValueError):
        storage_key("../x", "")


def test_private_upload_round_trips_with_key_type_info_and_signed_url(b2, tmp_path: Path) -> None:
    api, sim, _ = b2
    data = write(tmp_path / "v.mp4", 150)
    storage = B2Storage(api, "private-bucket", prefix="p/", url_ttl_s=3600, **FAST_RETRY)

    stored = storage.upload(tmp_path / "v.mp4", "job-1")

    assert stored.key == "p/videos/job-1.mp4" and stored.bytes == 150
    info = api.get_bucket_by_name("private-bucket").get_file_info_by_name(stored.key)
    assert info.content_type == "video/mp4"
    assert info.file_info["job_id"] == "job-1"
    assert download(api, "private-bucket", stored.key) == data
    base, _, query = stored.url.partition("?")
    assert base == api.get_download_url_for_file_name("private-bucket", stored.key)
    token = parse_qs(query)["Authorization"][0]
    assert "p/videos/job-1.mp4" in token and token.endswith("_3600")  # the simulator's token names prefix and TTL
    assert +sim.calls == Counter(upload_file=1)


def test_public_bucket_gets_plain_download_url(b2, tmp_path: Path) -> None:
    api, _, _ = b2
    write(tmp_path / "v.mp4", 50)
    stored = B2Storage(api, "public-bucket", **FAST_RETRY).upload(tmp_path / "v.mp4", "job-2")
    assert stored.url == api.get_download_url_for_file_name("public-bucket", "videos/job-2.mp4")
    assert "Authorization" not in stored.url


def test_large_file_goes_multipart_and_round_trips(b2, tmp_path: Path) -> None:
    api, sim, _ = b2
    size = RawSimulator.MIN_PART_SIZE * 5 + 17
    data = write(tmp_path / "v.mp4", size)
    stored = B2Storage(api, "private-bucket", **FAST_RETRY).upload(tmp_path / "v.mp4", "big")
    assert sim.calls["upload_part"] >= 2 and sim.calls["upload_file"] == 0
    assert stored.bytes == size
    assert download(api, "private-bucket", stored.key) == data


def test_reupload_overwrites_the_same_name(b2, tmp_path: Path) -> None:
    api, _, _ = b2
    storage = B2Storage(api, "private-bucket", **FAST_RETRY)
    write(tmp_path / "a.mp4", 100)
    second = write(tmp_path / "b.mp4", 120)
    storage.upload(tmp_path / "a.mp4", "same")
    storage.upload(tmp_path / "b.mp4", "same")
    assert latest_names(api, "private-bucket") == ["videos/same.mp4"]
    assert download(api, "private-bucket", "videos/same.mp4") == second


def test_transient_failures_beyond_b2sdk_retries_are_retried(b2, tmp_path: Path) -> None:
    api, sim, _ = b2
    data = write(tmp_path / "v.mp4", 100)
    sim.fail_next["upload_file"] = 6  # b2sdk itself tries 5 times per call; the 6th failure reaches us
    stored = B2Storage(api, "private-bucket", attempts=3, **FAST_RETRY).upload(tmp_path / "v.mp4", "flaky")
    assert sim.calls["upload_file"] == 7
    assert download(api, "private-bucket", stored.key) == data


def test_multipart_retry_resumes_and_round_trips(b2, tmp_path: Path) -> None:
    api, sim, _ = b2
    data = write(tmp_path / "v.mp4", RawSimulator.MIN_PART_SIZE * 4)
    sim.fail_next["upload_part"] = 12
    stored = B2Storage(api, "private-bucket", attempts=4, **FAST_RETRY).upload(tmp_path / "v.mp4", "flaky-big")
    bucket = api.get_bucket_by_name("private-bucket")
    assert download(api, "private-bucket", stored.key) == data
    assert list(bucket.list_unfinished_large_files()) == []
    assert sim.calls["start_large_file"] == 1  # the retry resumed b2sdk's unfinished large file
    assert sim.calls["upload_part"] == 4 + 12
    assert latest_names(api, "private-bucket") == ["videos/flaky-big.mp4"]


def test_permanent_failure_is_upload_failed_retryable_without_secrets(b2, tmp_path: Path, caplog) -> None:
    api, sim, key = b2
    write(tmp_path / "v.mp4", 100)
    sim.fail_next["upload_file"] = 10**6
    storage = B2Storage(api, "private-bucket", attempts=2, **FAST_RETRY)
    with caplog.at_level(logging.DEBUG), pytest.raises(JobFailure) as info:
        storage.upload(tmp_path / "v.mp4", "doomed")
    assert info.value.code is ErrorCode.upload_failed and info.value.retryable
    assert "videos/doomed.mp4" in info.value.message
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
        stored = storage.upload(tmp_path / "v.mp4", "j")
    assert stored.key == "x/videos/j.mp4" and "Authorization=" in stored.url
    for text in (str(missing.value), repr(storage), caplog.text):
        assert key not in text


def test_bad_app_key_is_a_storage_error_without_the_key() -> None:
    api, key_id, _ = new_api()
    settings = load_settings(None, B2_KEY_ID=key_id, B2_APP_KEY="not-the-key-s3cr3t", B2_BUCKET_NAME="b")
    with pytest.raises(StorageError) as info:
        B2Storage.from_settings(settings, api=api)
    assert "s3cr3t" not in str(info.value) and key_id in str(info.value)


def test_local_storage_writes_atomically_and_returns_file_url(tmp_path: Path) -> None:
    src = tmp_path / "work" / "out.mp4"
    src.parent.mkdir()
    data = write(src, 1000)
    storage = make_storage(load_settings(None, STORAGE_BACKEND="local", LOCAL_OUTPUT_DIR=tmp_path / "outputs"))
    assert isinstance(storage, LocalStorage)

    stored = storage.upload(src, "job-9")
    write(src, 500)
    again = storage.upload(src, "job-9")

    assert stored.key == again.key == "videos/job-9.mp4" and stored.bytes == 1000 and again.bytes == 500
    parts = urlsplit(again.url)
    assert parts.scheme == "file"
    assert Path(url2pathname(parts.path)).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in (tmp_path / "outputs" / "videos").iterdir()) == ["job-9.mp4"]
    assert src.exists() and data  # the caller's file is left in place
