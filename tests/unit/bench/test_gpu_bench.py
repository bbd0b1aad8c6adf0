"""bench/gpu_bench.py: its full-size configs are the published model, the script runs end to end, and
bench/device_wheels.py packs what it needs for a lent GPU."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
from support import REPO
from support.video import read_video

pytestmark = pytest.mark.torch  # torch in this process: one xdist group (tests/conftest.py)

ROOT = REPO


def load_script(name: str):
    """A bench/ script as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_size_modules_match_the_published_checkpoint() -> None:
    """On the meta device (no memory): ≈ 5.0 B transformer parameters, and a VAE the size of Wan2.2_VAE.pth."""
    import torch

    bench = load_script("gpu_bench")
    transformer, vae, text_dim = bench.build("full", torch.device("meta"), torch.bfloat16, torch.float32)
    transformer_params = sum(p.numel() for p in transformer.parameters())
    vae_fp32_gb = sum(p.numel() for p in vae.parameters()) * 4 / 1e9
    assert abs(transformer_params - 5.0e9) / 5.0e9 < 0.01, transformer_params
    assert abs(vae_fp32_gb - 2.82) < 0.03, vae_fp32_gb  # Wan2.2_VAE.pth is 2.82 GB of fp32
    assert text_dim == 4096
    # As from_pretrained(torch_dtype=bf16) leaves them: the matmuls bf16, the modulation tables fp32.
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert transformer.scale_shift_table.dtype == torch.float32
    assert transformer.blocks[0].scale_shift_table.dtype == torch.float32
    assert next(vae.parameters()).dtype == torch.float32


def test_random_weights_have_the_dtypes_from_pretrained_gives(tmp_path: Path) -> None:
    """bf16 with fp32 kept where diffusers keeps it, checked against a real save + from_pretrained."""
    import torch
    from diffusers import WanTransformer3DModel

    bench = load_script("gpu_bench")
    built, _, _ = bench.build("tiny", torch.device("cpu"), torch.bfloat16, torch.float32)
    WanTransformer3DModel(**bench.TINY_TRANSFORMER).save_pretrained(tmp_path)
    loaded = WanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)

    def dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
        return {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]}

    expected = dtypes(loaded)
    assert {torch.float32, torch.bfloat16} <= set(expected.values())
    assert dtypes(built) == expected


def test_tiny_scale_runs_both_paths_on_cpu(tmp_path: Path) -> None:
    """The script's main() with its command line, in this process: torch is imported here already."""
    out, videos = tmp_path / "gpu.json", tmp_path / "videos"
    size = ["--width", "256", "--height", "256", "--frames", "9"]
    load_script("gpu_bench").main(
        ["--scale", "tiny", "--device", "cpu", *size, "--warmup", "0", "--videos", str(videos), "--out", str(out)]
    )
    report = json.loads(out.read_text())
    for key in ("plain_denoise", "plain_total", "project_denoise", "project_decode_and_encode", "project_total"):
        assert report[key] > 0, key
    assert report["project_encode_tail"] <= report["project_decode_and_encode"] <= report["project_total"]
    assert report["speedup_total"] == round(report["plain_total"] / report["project_total"], 2)
    for name in ("plain.mp4", "project.mp4"):
        frames, _ = read_video(videos / name)
        assert frames.shape == (9, 256, 256, 3), name
        assert frames.std() > 1, f"{name} is blank"


def test_device_wheels_moves_ffmpeg_out_of_its_wheel(tmp_path: Path) -> None:
    """The carried imageio-ffmpeg wheel loses its binary (and that RECORD line); the binary comes back from xz."""
    import lzma
    import zipfile

    device_wheels = load_script("device_wheels")
    binary = bytes(range(256)) * 1000
    wheel = tmp_path / "imageio_ffmpeg-0.8.1-py3-none-manylinux_2_28_x86_64.whl"
    binary_name = "imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v9.0.2"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("imageio_ffmpeg/__init__.py", "version = 1\n")
        zf.writestr(binary_name, binary)
        zf.writestr(
            "imageio_ffmpeg-0.8.1.dist-info/RECORD",
            f"imageio_ffmpeg/__init__.py,sha256=a,12\n{binary_name},sha256=b,256000\n",
        )

    device_wheels.split_ffmpeg(wheel, tmp_path / "ffmpeg.xz")
    device_wheels.split_ffmpeg(wheel, tmp_path / "ffmpeg.xz")  # a second run finds it stripped, leaves nothing

    with zipfile.ZipFile(wheel) as zf:
        assert sorted(zf.namelist()) == ["imageio_ffmpeg-0.8.1.dist-info/RECORD", "imageio_ffmpeg/__init__.py"]
        assert zf.read("imageio_ffmpeg-0.8.1.dist-info/RECORD").decode() == "imageio_ffmpeg/__init__.py,sha256=a,12\n"
        assert zf.read("imageio_ffmpeg/__init__.py") == b"version = 1\n"
    assert lzma.decompress((tmp_path / "ffmpeg.xz").read_bytes()) == binary
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ffmpeg.xz", wheel.name]


def test_both_paths_run_under_the_same_math_switches(tmp_path: Path, monkeypatch) -> None:
    """issue 24, item 9: TF32 and cuDNN autotuning are process-wide; set only with the project's tuning, after
    the plain path had run, they gave the project path autotuning the baseline never got. A recording fake of
    each step: the switches come first, once, with the flag both paths then share."""
    bench = load_script("gpu_bench")
    events: list[tuple[str, object]] = []
    monkeypatch.setattr(bench, "_tune_math", lambda args, device: events.append(("math", args.cudnn_benchmark)))
    monkeypatch.setattr(
        bench,
        "_tune_project",
        lambda transformer, args, device: events.append(("project tuning", args.cudnn_benchmark)) or "native",
    )

    def recorder(name):
        def run(gen, job, embeds, out, clock):
            events.append((name, None))
            with clock(f"{name}_total"), clock(f"{name}_denoise"):
                time.sleep(0.002)  # the report divides one path's times by the other's
            if name == "project":
                out.write_bytes(b"mp4")

        return run

    monkeypatch.setattr(bench, "run_plain", recorder("plain"))
    monkeypatch.setattr(bench, "run_project", recorder("project"))
    size = ["--width", "256", "--height", "256", "--frames", "5"]
    out = tmp_path / "gpu.json"
    bench.main(
        ["--scale", "tiny", "--device", "cpu", *size, "--cudnn-benchmark", "--videos", str(tmp_path), "--out", str(out)]
    )
    assert events == [
        ("math", True),
        ("plain", None),  # warm-up (cold)
        ("plain", None),
        ("project tuning", True),
        ("project", None),  # warm-up (cold)
        ("project", None),
    ]
    report = json.loads(out.read_text())
    assert report["cudnn_benchmark"] is True
    assert {"cold_plain_total", "cold_project_total", "plain_total", "project_total"} <= set(report)
