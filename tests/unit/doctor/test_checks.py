"""doctor's checks in this process (doctor/checks.py, doctor/gpu.py): B2 through b2sdk's own simulator (it
cannot cross a process boundary), and the CUDA lines from facts a GPU box would report. The command as a real
process: tests/process/test_doctor.py."""

from __future__ import annotations

import pytest
from support.b2 import doctor_b2_settings, new_api

from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.doctor.checks import cuda_checks, orchestrator_check, storage_check
from worker_app_fastwan.doctor.gpu import CudaFacts, driver_needed
from worker_app_fastwan.doctor.report import Status

B2_SECRET = "K005-doctor-secret-app-key-93ab"


# ---- B2 through b2sdk's simulator, in process ------------------------------------------------------------


def test_b2_probe_writes_and_deletes_under_the_prefix(tmp_path):
    api, key_id, key = new_api()
    api.authorize_account(realm="production", application_key_id=key_id, application_key=key)
    bucket = api.create_bucket("videos-bucket", "allPrivate")
    check = storage_check(doctor_b2_settings(tmp_path, key_id, key), b2_api=api)
    assert check.status is Status.ok and "wrote and deleted fastwan/doctor/" in check.detail, check
    assert list(bucket.ls(recursive=True, latest_only=False)) == [], "the probe object is gone"


def test_b2_wrong_key_or_bucket_fails_without_the_key(tmp_path):
    api, key_id, key = new_api()
    api.authorize_account(realm="production", application_key_id=key_id, application_key=key)
    api.create_bucket("videos-bucket", "allPrivate")
    wrong = storage_check(doctor_b2_settings(tmp_path, key_id, B2_SECRET), b2_api=new_api()[0])
    assert wrong.status is Status.fail and B2_SECRET not in wrong.line()
    missing = storage_check(doctor_b2_settings(tmp_path, key_id, key, bucket="no-such-bucket"), b2_api=api)
    assert missing.status is Status.fail and "B2_BUCKET_NAME" in missing.detail


# ---- the CUDA lines, from facts a GPU box would report ---------------------------------------------------


@pytest.mark.parametrize(
    ("cuda", "driver", "mark"), [("13.0", "580.65.06", "✓"), ("13.0", "570.86.10", "✗"), ("12.8", "570.86.10", "✓")]
)
def test_driver_against_the_cuda_build(tmp_path, cuda, driver, mark):
    facts = CudaFacts(torch_version="2.12.0", cuda_version=cuda, available=True, driver=driver)
    line = cuda_checks(load_settings(env_file=None, STATE_DIR=tmp_path), facts)[0].line()
    assert line.startswith(mark), line
    assert driver_needed("13.0") == 580 and driver_needed(None) is None


def test_gpu_lines_give_profile_and_largest_default_job(tmp_path):
    from worker_app_fastwan.doctor.gpu import Gpu

    facts = CudaFacts(
        torch_version="2.12.0",
        cuda_version="13.0",
        available=True,
        driver="580.65.06",
        gpus=[Gpu(0, "NVIDIA GeForce RTX 4090", 23.6, 23.2), Gpu(1, "NVIDIA H200", 139.8, 100.0)],
    )
    checks = cuda_checks(load_settings(env_file=None, STATE_DIR=tmp_path), facts)
    assert [c.name for c in checks] == ["cuda", "gpu 0", "gpu 1"]
    assert checks[1].status is Status.ok and "profile balanced; admits 1280×704 up to 233 frames" in checks[1].detail
    assert checks[2].status is Status.warn and "already in use" in checks[2].detail
    small = cuda_checks(
        load_settings(env_file=None, STATE_DIR=tmp_path),
        CudaFacts(cuda_version="13.0", available=True, driver="580.1", gpus=[Gpu(0, "RTX 3080", 9.8, 9.6)]),
    )
    assert small[1].status is Status.fail and "not even" in small[1].detail


def test_orchestrator_skip_and_fail_by_mode(tmp_path):
    queue = load_settings(env_file=None, STATE_DIR=tmp_path)
    assert orchestrator_check(queue).status is Status.skip
