"""The image's start-up checks as the entrypoint and doctor meet them, in processes of their own: the folder
check of `check-settings`, and reading torch's build without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys

from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.doctor.image import torch_build


def test_torch_build_is_read_without_importing_torch():
    version, cuda = torch_build()
    assert version.startswith("2.") and cuda is None  # the CPU wheel `make setup` installs
    code = (
        "import sys; from worker_app_fastwan.doctor.image import torch_build; torch_build(); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_check_settings_refuses_an_unwritable_state_dir_in_one_line(tmp_path):
    """What the entrypoint runs before anything starts: exit 2, one line naming STATE_DIR, no traceback."""
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(STATE_DIR=str(blocked / "state"), PIPELINE_BACKEND="tiny", STORAGE_BACKEND="local",
               LOCAL_OUTPUT_DIR=str(tmp_path / "videos"))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "worker_app_fastwan", "check-settings"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "STATE_DIR:" in lines[0] and "Traceback" not in done.stderr, done.stderr
