"""b2sdk's own in-memory B2 (RawSimulator), as b2sdk tests itself, with injectable transient failures."""

from __future__ import annotations

import io
import threading
from collections import Counter
from pathlib import Path

from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, InMemoryCache, RawSimulator
from b2sdk.v2.exception import ServiceError

from worker_app_fastwan.core.settings import Settings, load_settings


class FlakySimulator(RawSimulator):
    """RawSimulator that counts upload calls and fails the next N of each with a transient 503."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        self.fail_next: Counter[str] = Counter()
        self._lock = threading.Lock()  # parts are uploaded from b2sdk's thread pool

    def _maybe_fail(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1
            if self.fail_next[name] > 0:
                self.fail_next[name] -= 1
                raise ServiceError("503 service_unavailable: injected")

    def upload_file(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._maybe_fail("upload_file")
        return super().upload_file(*args, **kwargs)

    def upload_part(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._maybe_fail("upload_part")
        return super().upload_part(*args, **kwargs)

    def start_large_file(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._maybe_fail("start_large_file")
        return super().start_large_file(*args, **kwargs)


def new_api(max_upload_workers: int = 10) -> tuple[B2Api, str, str]:
    config = B2HttpApiConfig(_raw_api_class=FlakySimulator)
    api = B2Api(InMemoryAccountInfo(), InMemoryCache(), max_upload_workers=max_upload_workers, api_config=config)
    key_id, key = api.session.raw_api.create_account()
    return api, key_id, key


def doctor_b2_settings(tmp_path: Path, key_id: str, key: str, bucket: str = "videos-bucket") -> Settings:
    """Settings of a box storing on B2 under `fastwan/`, as doctor's storage probe sees them."""
    return load_settings(
        env_file=None,
        STORAGE_BACKEND="b2",
        B2_KEY_ID=key_id,
        B2_APP_KEY=key,
        B2_BUCKET_NAME=bucket,
        B2_PREFIX="fastwan/",
        STATE_DIR=tmp_path / "state",
        PIPELINE_BACKEND="tiny",
    )


def download(api: B2Api, bucket_name: str, key: str) -> bytes:
    buf = io.BytesIO()
    api.get_bucket_by_name(bucket_name).download_file_by_name(key).save(buf)
    return buf.getvalue()
