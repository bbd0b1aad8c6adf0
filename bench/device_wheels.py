"""Pack what bench/gpu_bench.py and bench/gpu_checks.py need on the lent H100/H200 beyond that machine's image.

The image has torch, transformers, accelerate, huggingface_hub, safetensors, numpy and pillow, and nothing
can be fetched there. This downloads the rest as wheels for its Python 3.12 into `.whl/` (git-ignored;
it travels with `carry: [".whl"]`), at this project's tested versions. imageio-ffmpeg's wheel (68 MB, all
but 0.3 MB of it the ffmpeg binary) would not fit the 64 MiB a call may carry, so its binary travels apart,
xz-compressed (`.whl/ffmpeg.xz`, about 48 MB), and `IMAGEIO_FFMPEG_EXE` points at it there. BENCHMARKS.md
has the device command.

    python bench/device_wheels.py      # about 3 minutes on 2 cores, most of it compressing ffmpeg
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = [
    "diffusers==0.42.1",
    "imageio-ffmpeg==0.8.1",
    "ftfy==6.3.1",
    "wcwidth==0.9.4",
    "pydantic==2.14.3",
    "pydantic-core==2.50.4",
    "pydantic-settings==2.16.3",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "python-dotenv==1.2.4",
    "importlib-metadata==10.2.0",
    "zipp==4.1.2",
    # bench/gpu_checks.py runs the worker itself (doctor, buffer mode) and the orchestrator stub:
    "httpx==0.29.0",
    "httpcore==1.0.9",
    "h11==0.16.0",
    "anyio==4.16.0",
    "idna==3.21",
    "certifi==2026.10.19.post1",
    "typing-extensions==4.16.0",
    "tenacity==9.2.1",
    "prometheus-client==0.26.0",
    "nvidia-ml-py==13.615.71",
    "rich==15.0.0",
    "markdown-it-py==4.3.0",
    "mdurl==0.1.2",
    "pygments==2.21.0",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "annotated-doc==0.0.7",
    "opentelemetry-api==1.45.3",
    "uvicorn==0.55.0",
    "click==8.5.1",
    "sse-starlette==3.7.1",  # the stub's event streams
    "standardwebhooks==1.3.0",  # the stub's webhook signatures
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]


def main(dest: Path = ROOT / ".whl") -> None:
    dest.mkdir(exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(dest),
            *WHEELS,
        ],
        check=True,
    )
    for wheel in dest.glob("imageio_ffmpeg-*.whl"):
        split_ffmpeg(wheel, dest / "ffmpeg.xz")
    total = sum(path.stat().st_size for path in dest.iterdir())
    print(f"{dest}: {total / 2**20:.1f} MiB (a call may carry 64 MiB with the repo)")


def split_ffmpeg(wheel: Path, binary_out: Path) -> None:
    """Rewrite the wheel without its ffmpeg binary (and without the binary's RECORD line); xz the binary."""
    with zipfile.ZipFile(wheel) as source:
        binaries = [name for name in source.namelist() if "/binaries/ffmpeg-" in name]
    if not binaries:
        return  # already stripped by an earlier run
    stripped = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if item.filename in binaries:
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if line.split(",")[0] not in binaries).encode()
            target.writestr(item, data)
        with source.open(binaries[0]) as binary, lzma.open(binary_out, "wb", preset=9) as packed:
            shutil.copyfileobj(binary, packed)
    stripped.replace(wheel)


if __name__ == "__main__":
    main()
