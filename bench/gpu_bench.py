"""GPU benchmark: full-size Wan2.2-TI2V-5B (random weights) — the plain diffusers call vs the project's path.

No weights can be downloaded on the benchmark machine, so the transformer and VAE are built from their
published configs with random weights (bf16). Prompt embeddings are random too unless --text-encoder
builds UMT5-XXL (5.7 B parameters, 11 GB). Both paths get the same latents, steps and embeddings:

- plain:   `WanPipeline.__call__(prompt_embeds=…, expand_timesteps=True, output_type="np")`, then
           `diffusers.utils.export_to_video` — the straightforward way to serve this model;
- project: `WanGenerator.denoise` (scalar t2v timestep, fastest attention backend, optional
           torch.compile) and `decode_stream` feeding `Mp4Writer` (encoding overlapped with decoding).

Both run under the same process-wide math switches (TF32; cuDNN autotuning with --cudnn-benchmark), set
before either runs. Each path's first (warm-up) run is reported too, as `cold_*`.

    python bench/gpu_bench.py                       # 704x1280x121, 3 steps, on CUDA
    python bench/gpu_bench.py --scale tiny --device cpu --width 256 --height 256 --frames 9   # validate on CPU
    python bench/gpu_bench.py --device cpu --dtype bfloat16 --width 256 --height 256 --frames 9 --steps 1 \
        --warmup 0                                  # the full-size modules, run once on CPU (≈ 14 GB RAM)
Prints a table and writes bench/results/gpu_latest.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

# Published configs (diffusers' Wan2.2-TI2V-5B conversion, as published with the checkpoint).
FULL_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=24,
    attention_head_dim=128,
    in_channels=48,
    out_channels=48,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=14336,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
FULL_VAE = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    temperal_downsample=[False, True, True],
)
TINY_TRANSFORMER = dict(
    FULL_TRANSFORMER,
    num_attention_heads=2,
    attention_head_dim=12,
    text_dim=64,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=64,
)
TINY_VAE = dict(FULL_VAE, base_dim=3, decoder_base_dim=None, dim_mult=[1, 1, 1, 1], num_res_blocks=1)


def build(scale: str, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    t_cfg = FULL_TRANSFORMER if scale == "full" else TINY_TRANSFORMER
    torch.manual_seed(0)
    with torch.device(device), _default_dtype(dtype):  # never a transient fp32 copy (20 GB) of the 5 B transformer
        transformer = _keep_fp32_modules(WanTransformer3DModel(**t_cfg)).eval()
    return transformer, build_vae(scale, device, vae_dtype), t_cfg["text_dim"]


def build_vae(scale: str, device: torch.device, vae_dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    v_cfg = {k: v for k, v in (FULL_VAE if scale == "full" else TINY_VAE).items() if v is not None}
    with torch.device(device), _default_dtype(vae_dtype):
        return AutoencoderKLWan(**v_cfg, latents_mean=[0.0] * 48, latents_std=[1.0] * 48).eval()


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _keep_fp32_modules(model: torch.nn.Module) -> torch.nn.Module:
    """What `from_pretrained(torch_dtype=bf16)` does: a parameter stays fp32 when a part of its dotted name
    is in `_keep_in_fp32_modules` (the norms, rope, time embedding and every block's modulation table)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        if keep.intersection(name.split(".")):
            param.data = param.data.float()
    return model


def text_encoder_parts(scale: str, device: torch.device, dtype: torch.dtype, text_dim: int, build_it: bool):
    """A real UMT5 (random weights) when asked; otherwise a stand-in whose output is fixed embeddings."""
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -0.5)] + [
        (c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz"
    ]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    if scale == "full" and build_it:
        cfg = UMT5Config(
            vocab_size=256384,
            d_model=4096,
            d_kv=64,
            d_ff=10240,
            num_layers=24,
            num_heads=64,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=32,
        )
    else:
        cfg = UMT5Config(
            vocab_size=64,
            d_model=text_dim,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=8,
        )
    with torch.device(device), _default_dtype(dtype):
        return tokenizer, UMT5EncoderModel(cfg).eval()


class Clock:
    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, {}

    @contextmanager
    def __call__(self, name: str):
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.times[name] = round(time.perf_counter() - start, 3)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def run_plain(gen, job, embeds, out: Path, clock: Clock) -> None:
    """The plain call, twice: once stopping at the latents (its denoising alone), then whole + export."""
    from diffusers.utils import export_to_video

    def call(output_type: str):
        gen.scheduler.generator = torch.Generator("cpu").manual_seed(0)
        return gen.t2v(
            prompt_embeds=embeds,
            height=job.height,
            width=job.width,
            num_frames=job.num_frames,
            num_inference_steps=job.num_inference_steps,
            guidance_scale=1.0,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type=output_type,
        ).frames

    with clock("plain_denoise"):
        call("latent")
    with clock("plain_total"):
        with clock("plain_pipeline_call"):
            frames = call("np")[0]
        with clock("plain_export_to_video"):
            export_to_video(list(frames), str(out), fps=job.fps)


def run_project(gen, job, embeds, out: Path, clock: Clock) -> None:
    from worker_app_fastwan.gpu_child.encoder import Mp4Writer

    gen._encode_prompt = lambda _prompt: embeds  # same embeddings as the plain call; prompt encoding timed apart
    with clock("project_total"):
        with clock("project_denoise"):
            latents = gen.denoise(job, None, lambda *_: None)
        writer = Mp4Writer(out, job.width, job.height, job.fps)
        with clock("project_decode_and_encode"):
            for chunk in gen.decode_stream(latents):
                writer.write(chunk)
            with clock("project_encode_tail"):  # what encoding adds after the last decoded frame
                writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="transformer and text encoder (default: bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--vae-dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="the whole VAE, both paths (default bfloat16: the worker's VAE_DTYPE default for the decoder; "
        "the worker keeps the encoder in float32, which a text-to-video run does not use)",
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--text-encoder", action="store_true", help="build UMT5-XXL and time prompt encoding")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer (project path)")
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="cuDNN autotuning (the worker's CUDNN_BENCHMARK), for both paths: the math switches are set once, "
        "before either runs",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--videos", type=Path, default=None, help="keep plain.mp4 and project.mp4 here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_latest.json")
    args = parser.parse_args(argv)
    report = bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for key, value in report.items():
        print(f"{key:32s} {value}")


def bench(args: argparse.Namespace) -> dict:
    from worker_app_fastwan.core.schema import JobInput
    from worker_app_fastwan.pipelines.wan import WanGenerator, WanParts

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    clock = Clock(device)
    with clock("build"):
        transformer, vae, text_dim = build(args.scale, device, dtype, getattr(torch, args.vae_dtype))
        tokenizer, text_encoder = text_encoder_parts(args.scale, device, dtype, text_dim, args.text_encoder)
    gen = WanGenerator(WanParts(tokenizer, text_encoder, transformer, vae), device)
    job = JobInput(
        prompt="a red fox running through fresh snow, cinematic",
        width=args.width,
        height=args.height,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        seed=0,
    )
    # TF32 and cuDNN autotuning are process-wide: set before either path runs, so that both get them (and
    # both warm-ups pay the autotuning); the attention kernel and compilation are the project path's own.
    _tune_math(args, device)
    with clock("prompt_encoding"):
        embeds = gen._encode_prompt(job.prompt)
    tmp = args.videos or Path(tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    cold = Clock(device)  # each path's first run: kernels loaded, cuDNN autotuned, allocator grown
    for i in range(args.warmup):
        run_plain(gen, job, embeds, tmp / "w1.mp4", cold if i == 0 else Clock(device))
    _reset_peak(device)
    run_plain(gen, job, embeds, tmp / "plain.mp4", clock)
    plain_peak = _peak_gb(device)
    attention = _tune_project(transformer, args, device)
    for i in range(args.warmup):
        run_project(gen, job, embeds, tmp / "w2.mp4", cold if i == 0 else Clock(device))
    _reset_peak(device)
    run_project(gen, job, embeds, tmp / "project.mp4", clock)
    t = clock.times
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "scale": args.scale,
        "size": f"{args.width}x{args.height}x{args.frames}",
        "steps": args.steps,
        "dtype": str(dtype).removeprefix("torch."),
        "vae_dtype": args.vae_dtype,
        "compile": args.compile,
        "cudnn_benchmark": args.cudnn_benchmark,
        "attention_backend": attention,
        "torch": torch.__version__,
        **t,
        "plain_peak_gb": plain_peak,
        "project_peak_gb": _peak_gb(device),
        "speedup_denoise": round(t["plain_denoise"] / t["project_denoise"], 2),
        "speedup_total": round(t["plain_total"] / t["project_total"], 2),
        "project_mp4_bytes": (tmp / "project.mp4").stat().st_size,
        **{f"cold_{name}": seconds for name, seconds in cold.times.items()},
    }
    if device.type == "cuda" and args.scale == "full":
        report["targets_met"] = {
            "denoise_le_3s": t["project_denoise"] <= 3.0,
            "total_le_8s": t["project_total"] <= 8.0,
            "speedup_ge_1_5": report["speedup_total"] >= 1.5,
        }
    return report


def _tune_math(args: argparse.Namespace, device: torch.device) -> None:
    """The worker's process-wide CUDA math switches (TF32, cuDNN autotuning), for both paths."""
    from worker_app_fastwan.pipelines.tuning import cuda_math_settings

    if device.type == "cuda":
        cuda_math_settings(cudnn_benchmark=args.cudnn_benchmark)


def _tune_project(transformer, args: argparse.Namespace, device: torch.device) -> str:
    """The worker's own CUDA settings (one function, so the bench times what a worker runs)."""
    from worker_app_fastwan.pipelines.tuning import tune_for_cuda

    if device.type != "cuda":
        return "native"
    return tune_for_cuda(transformer, compile_transformer=args.compile, cudnn_benchmark=args.cudnn_benchmark)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


if __name__ == "__main__":
    main()
