"""Storage figures, side by side in one run: prints them, writes bench/results/storage.json.

1. Upload throughput of a 50 MB file to an S3-protocol server on loopback (moto's server behind the SigV4 and
   checksum rules of tests/support/s3_server.py, a process of its own): `S3Storage` with one checksummed PUT
   vs multipart (8 MiB parts, 4 at a time), alternating, each repeated.
2. The poster's cost as a fraction of encoding: 121 frames of 1280x704 (smooth moving gradients plus mild
   noise, as `make bench` encodes) through `Mp4Writer` (libx264, the worker's default preset and CRF), then
   the poster exactly as the GPU child makes it (`PosterFrame` over the same chunks, `write_poster`).

    .venv/bin/python bench/storage_bench.py [--repeats 3] [--out bench/results/storage.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the S3 server the tests use
sys.path.insert(0, str(ROOT / "bench"))

from cpu_bench import test_frames  # noqa: E402
from support.s3_server import S3Server  # noqa: E402

from worker_app_fastwan.core.settings import load_settings  # noqa: E402
from worker_app_fastwan.gpu_child.encoder import Mp4Writer  # noqa: E402
from worker_app_fastwan.gpu_child.poster import PosterFrame, write_poster  # noqa: E402
from worker_app_fastwan.job.s3_storage import MIB, S3Storage  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "storage.json"
UPLOAD_BYTES = 50 * 1000 * 1000
CHUNK = 4  # frames per chunk, as the VAE decodes them (one latent frame: 4 video frames)


def bench_uploads(repeats: int, folder: Path) -> dict[str, object]:
    server = S3Server().start()
    try:
        server.client().create_bucket(Bucket="bench")
        settings = load_settings(None, **server.env("bench"))
        path = folder / "video.mp4"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, UPLOAD_BYTES, dtype=np.uint8).tobytes())
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        arms = {
            "single_put": S3Storage.from_settings(settings, multipart_threshold=1 << 62),
            "multipart": S3Storage.from_settings(settings),  # the defaults: 16 MiB threshold, 8 MiB parts, 4 at once
        }
        seconds: dict[str, list[float]] = {name: [] for name in arms}
        for n in range(repeats):
            for name, storage in arms.items():
                job = f"bench-{name}-{n}"
                start = time.perf_counter()
                storage.upload(path, job, sha)
                seconds[name].append(time.perf_counter() - start)
        mb_s = {name: UPLOAD_BYTES / 1e6 / statistics.median(s) for name, s in seconds.items()}
        return {
            "bytes": UPLOAD_BYTES,
            "part_size_mib": arms["multipart"].part_size // MIB,
            "parallel_parts": arms["multipart"].max_parallel_parts,
            "seconds": seconds,
            "mb_per_s_median": mb_s,
            "multipart_vs_single_put": mb_s["multipart"] / mb_s["single_put"],
        }
    finally:
        server.stop()


def bench_poster(repeats: int, folder: Path) -> dict[str, object]:
    frames = test_frames(121, 704, 1280)
    encode_s, poster_s, poster_bytes = [], [], []
    for n in range(repeats):
        writer = Mp4Writer(folder / f"v{n}.mp4", 1280, 704, 24)  # the worker's defaults: superfast, CRF 27, libx264
        picked = PosterFrame(len(frames))
        start = time.perf_counter()
        offer_s = 0.0
        for i in range(0, len(frames), CHUNK):
            chunk = frames[i : i + CHUNK]
            writer.write(chunk)
            mark = time.perf_counter()
            picked.offer(chunk)
            offer_s += time.perf_counter() - mark
        writer.close()
        encode_s.append(time.perf_counter() - start - offer_s)
        assert picked.frame is not None
        mark = time.perf_counter()
        poster_bytes.append(write_poster(picked.frame, folder / f"v{n}.jpg"))
        poster_s.append(offer_s + time.perf_counter() - mark)
    return {
        "frames": len(frames),
        "size": "1280x704",
        "encode_s": encode_s,
        "poster_s": poster_s,
        "poster_bytes": poster_bytes,
        "poster_fraction_of_encode": statistics.median(poster_s) / statistics.median(encode_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp:
        folder = Path(tmp)
        results = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "upload": bench_uploads(args.repeats, folder),
            "poster": bench_poster(args.repeats, folder),
        }
    up, poster = results["upload"], results["poster"]
    assert isinstance(up, dict) and isinstance(poster, dict)
    print(f"upload of {UPLOAD_BYTES / 1e6:.0f} MB to the loopback S3 server, median of {args.repeats}:")
    for name, value in up["mb_per_s_median"].items():
        print(f"  {name:<11} {value:7.1f} MB/s   {', '.join(f'{s:.2f}' for s in up['seconds'][name])} s")
    print(f"  multipart / single PUT: {up['multipart_vs_single_put']:.2f}x")
    print(f"poster vs encoding, 121 frames of 1280x704, median of {args.repeats}:")
    encode, cost = statistics.median(poster["encode_s"]), statistics.median(poster["poster_s"])
    share, size = poster["poster_fraction_of_encode"] * 100, statistics.median(poster["poster_bytes"]) / 1000
    print(f"  encode {encode:.3f} s, poster {cost * 1000:.1f} ms ({share:.2f} % of encoding), poster {size:.1f} kB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
