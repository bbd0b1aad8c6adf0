"""gpu_child/compile_cache.py: torch.compile's caches go to the model volume (issue 24, item 4)."""

from __future__ import annotations

import os
from pathlib import Path

from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.gpu_child.compile_cache import compile_cache_env, compile_cache_root, use_compile_caches


def test_the_caches_default_to_a_folder_under_hf_home(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    settings = load_settings(None, STATE_DIR=tmp_path / "state")
    assert compile_cache_root(settings) == tmp_path / "hf" / "torch-compile"
    env = compile_cache_env(compile_cache_root(settings), {})
    assert env == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "hf" / "torch-compile" / "inductor"),
        "TRITON_CACHE_DIR": str(tmp_path / "hf" / "torch-compile" / "triton"),
    }
    assert all(Path(folder).is_dir() for folder in env.values())


def test_a_setting_or_the_operators_variable_wins(tmp_path: Path) -> None:
    settings = load_settings(None, STATE_DIR=tmp_path / "state", COMPILE_CACHE_DIR=tmp_path / "cc")
    env = compile_cache_env(compile_cache_root(settings), {"TRITON_CACHE_DIR": "/elsewhere"})
    assert env == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cc" / "inductor")}


def test_an_unusable_folder_leaves_the_library_default(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert compile_cache_env(blocked, {}) == {}


def test_the_gpu_process_sets_them_where_something_compiles(tmp_path: Path, monkeypatch) -> None:
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    use_compile_caches(load_settings(None, PIPELINE_BACKEND="tiny", TORCH_COMPILE=True, COMPILE_CACHE_DIR=tmp_path))
    use_compile_caches(load_settings(None, PIPELINE_BACKEND="diffusers", COMPILE_CACHE_DIR=tmp_path))
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    compiled = load_settings(None, PIPELINE_BACKEND="diffusers", TORCH_COMPILE=True, COMPILE_CACHE_DIR=tmp_path / "d")
    use_compile_caches(compiled)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "d" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "d" / "triton")
