"""Does the pipeline still make the video the prompt asks for? The miniature's accuracy over its whole world.

    python bench/miniature_eval.py                 # every colour x shape x motion, seeds 0 and 1, t2v and i2v
    python bench/miniature_eval.py --seeds 0 --size 256x256x33 --every 6   # a sample at the larger size

Generates each clip through the production path (`WanGenerator.generate`, as the `tiny` backend loads it),
measures colour, shape and motion from the decoded frames (worker_app_fastwan/miniature/measure.py), prints
a table per colour, shape and motion and the totals against the issue's thresholds, and writes every
clip's measurements to bench/results/miniature_eval.json. Exit status 1 when a total is below its threshold.
About 1 s per clip at 128x128x17 on 2 cores (240 clips: ~4 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker_app_fastwan.miniature.evaluate import THRESHOLDS, Outcome, Results, grid, run_cases  # noqa: E402
from worker_app_fastwan.miniature.world import MOTIONS, PALETTE, SHAPES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "miniature_eval.json"
REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "support" / "fixtures" / "miniature_reference.png"


def table(results: Results) -> str:
    """Share right per colour, per shape and per motion (text-to-video), then image-to-video per motion."""
    lines = ["| group | clips | colour | shape | motion |", "|---|---|---|---|---|"]

    def row(name: str, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        share = {k: np.mean([o.verdict[k] for o in outcomes]) * 100 for k in ("colour", "shape", "motion")}
        lines.append(
            f"| {name} | {len(outcomes)} | {share['colour']:.0f} % | {share['shape']:.0f} % | {share['motion']:.0f} % |"
        )

    t2v = results.t2v
    for colour in PALETTE:
        row(colour, [o for o in t2v if o.case.spec.colour == colour])
    for shape in SHAPES:
        row(shape, [o for o in t2v if o.case.spec.shape == shape])
    for motion in MOTIONS:
        name = f"moving {motion}" if motion != "still" else "standing still"
        row(name, [o for o in t2v if o.case.spec.motion == motion])
    row("**text-to-video, all**", t2v)
    if results.i2v:
        lines += ["", "| image-to-video | clips | motion | first-frame PSNR (mean, min) |", "|---|---|---|---|"]
        for motion in MOTIONS:
            group = [o for o in results.i2v if o.case.spec.motion == motion]
            if group:
                psnrs = [o.first_frame_psnr or 0.0 for o in group]
                motion_share = np.mean([o.verdict["motion"] for o in group]) * 100
                psnr_shown = f"{np.mean(psnrs):.1f} dB, {np.min(psnrs):.1f} dB"
                lines.append(f"| {motion} | {len(group)} | {motion_share:.0f} % | {psnr_shown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size", default="128x128x17", help="WIDTHxHEIGHTxFRAMES (default 128x128x17)")
    parser.add_argument("--every", type=int, default=1, help="every Nth clip of the grid (a sample; 1: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--weights", type=Path, help="a model folder other than the shipped one")
    parser.add_argument(
        "--write-reference", action="store_true", help=f"(after retraining) store the reference clip in {REFERENCE}"
    )
    args = parser.parse_args(argv)
    width, height, frames = (int(v) for v in args.size.split("x"))

    import torch

    from worker_app_fastwan.pipelines.tiny import WEIGHTS_DIR, load_miniature
    from worker_app_fastwan.pipelines.wan import WanGenerator

    started = time.perf_counter()
    generator = WanGenerator(load_miniature(args.weights or WEIGHTS_DIR), torch.device("cpu"))
    load_s = time.perf_counter() - started
    if args.write_reference:
        from PIL import Image

        from worker_app_fastwan.miniature.evaluate import REFERENCE_CASE, frames_of

        clip = frames_of(generator, REFERENCE_CASE)
        Image.fromarray(np.concatenate(list(clip), axis=1)).save(REFERENCE, optimize=True)
        print(f"wrote {REFERENCE}: {REFERENCE_CASE.prompt!r}, seed {REFERENCE_CASE.seed}, {len(clip)} frames")
        return 0
    cases = grid(args.seeds, width=width, height=height, num_frames=frames)[:: max(1, args.every)]
    print(f"{len(cases)} clips at {args.size}, torch threads {torch.get_num_threads()} (model loaded in {load_s:.1f}s)")

    def progress(outcome: Outcome) -> None:
        wrong = [k for k, ok in outcome.verdict.items() if not ok and (k == "motion" or not outcome.case.i2v)]
        extra = f" psnr {outcome.first_frame_psnr:.1f}" if outcome.first_frame_psnr is not None else ""
        mode = "i2v" if outcome.case.i2v else "t2v"
        flag = "wrong: " + ",".join(wrong) if wrong else "ok"
        print(f"  {mode} seed {outcome.case.seed} {outcome.case.prompt!r}: {flag}{extra} ({outcome.seconds:.2f}s)")

    results = run_cases(generator, cases, progress)
    summary = results.summary()
    failures = results.failures()
    seconds = [o.seconds for o in results.t2v]
    print("\n" + table(results) + "\n")
    for key, bar in THRESHOLDS.items():
        if key in summary:
            value = summary[key]
            shown = f"{value:.1f} dB" if key.endswith("_db") else f"{value * 100:.1f} %"
            bar_shown = f"{bar:.0f} dB" if key.endswith("_db") else f"{bar * 100:.0f} %"
            print(f"{key:>12}: {shown:>8}  (threshold {bar_shown}) {'FAIL' if value < bar else 'ok'}")
    print(f"per t2v clip: median {np.median(seconds):.2f}s through WanGenerator.generate (decode included)")
    report = {
        "size": args.size,
        "seeds": args.seeds,
        "summary": summary,
        "thresholds": THRESHOLDS,
        "failures": failures,
        "median_clip_s": round(float(np.median(seconds)), 3),
        "torch_threads": torch.get_num_threads(),
        "clips": [o.as_dict() for o in results.outcomes],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
