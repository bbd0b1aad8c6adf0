"""GPU benchmark: full-size Wan2.2-TI2V-5B (random weights) — the plain diffusers call vs the project's path.

No weights can be downloaded on the benchmark machine, so the transformer and VAE are built from their
published configs with random weights (bf16). Prompt embeddings are random too unless --text-encoder
builds UMT5-XXL (5.7 B parameters, 11 GB). Both paths get the same latents, steps and embeddings:

- plain:   `WanPipeline.__call__(prompt_embeds=…, expand_timesteps=True, output_type="np")`, then
           `diffusers.utils.export_to_video` — the straightforward way to serve this model;
- project: `WanGenerator.denoise` (scalar t2v timestep, fastest attention backend, optional
           torch.compile) and `decode_stream` feeding `Mp4Writer` (encoding overlapped with decoding).

    python bench/gpu_bench.py                       # 704x1280x121, 3 steps, on CUDA
    python bench/gpu_bench.py --scale tiny --device cpu --width 256 --height 256 --frames 9   # validate on CPU
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

# Published configs (diffusers' Wan2.2-TI2V-5B conversion; see shared/notes/fastwan-facts.md).
FULL_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
                        out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30,
                        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
FULL_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                scale_factor_temporal=4, temperal_downsample=[False, True, True])
TINY_TRANSFORMER = dict(FULL_TRANSFORMER, num_attention_heads=2, attention_head_dim=12, text_dim=64, ffn_dim=32,
                        num_layers=2, rope_max_seq_len=64)
TINY_VAE = dict(FULL_VAE, base_dim=3, decoder_base_dim=None, dim_mult=[1, 1, 1, 1], num_res_blocks=1)


def build(scale: str, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    t_cfg, v_cfg = (FULL_TRANSFORMER, FULL_VAE) if scale == "full" else (TINY_TRANSFORMER, TINY_VAE)
    v_cfg = {k: v for k, v in v_cfg.items() if v is not None}
    torch.manual_seed(0)
    with torch.device(device):
        transformer = _keep_fp32_modules(WanTransformer3DModel(**t_cfg).to(dtype)).eval()
        vae = AutoencoderKLWan(**v_cfg, latents_mean=[0.0] * 48, latents_std=[1.0] * 48).to(vae_dtype).eval()
    return transformer, vae, t_cfg["text_dim"]


def _keep_fp32_modules(model: torch.nn.Module) -> torch.nn.Module:
    """What `from_pretrained(torch_dtype=bf16)` does: norms, rope and time embedding stay fp32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(part in keep for part in name.split(".")):
            module.float()
    for name, param in model.named_parameters(recurse=False):
        if name in keep:
            param.data = param.data.float()
    return model


def text_encoder_parts(scale: str, device: torch.device, dtype: torch.dtype, text_dim: int, build_it: bool):
    """A real UMT5 (random weights) when asked; otherwise a stand-in whose output is fixed embeddings."""
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -0.5)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    if scale == "full" and build_it:
        cfg = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                         feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
    else:
        cfg = UMT5Config(vocab_size=64, d_model=text_dim, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                         feed_forward_proj="gated-gelu", relative_attention_num_buckets=8)
    with torch.device(device):
        return tokenizer, UMT5EncoderModel(cfg).to(dtype).eval()


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
    from diffusers.utils import export_to_video

    pipe = gen.t2v
    gen.scheduler.generator = torch.Generator("cpu").manual_seed(0)
    with clock("plain_total"):
        with clock("plain_pipeline_call"):
            frames = pipe(prompt_embeds=embeds, height=job.height, width=job.width, num_frames=job.num_frames,
                          num_inference_steps=job.num_inference_steps, guidance_scale=1.0,
                          generator=torch.Generator("cpu").manual_seed(0), output_type="np").frames[0]
        with clock("plain_export_to_video"):
            export_to_video(list(frames), str(out), fps=job.fps)


def run_project(gen, job, embeds, out: Path, clock: Clock) -> None:
    from worker_app_fastwan.encoder import Mp4Writer

    gen._encode_prompt = lambda _prompt: embeds  # same embeddings as the plain call; prompt encoding timed apart
    with clock("project_total"):
        with clock("project_denoise"):
            latents = gen.denoise(job, None, lambda *_: None)
        writer = Mp4Writer(out, job.width, job.height, job.fps)
        with clock("project_decode_and_encode"):
            for chunk in gen.decode_stream(latents):
                writer.write(chunk)
            writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--text-encoder", action="store_true", help="build UMT5-XXL and time prompt encoding")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer (project path)")
    parser.add_argument("--attention", default="_flash_3,flash", help="attention backends to try, in order")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_latest.json")
    args = parser.parse_args()
    report = bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for key, value in report.items():
        print(f"{key:32s} {value}")


def bench(args: argparse.Namespace) -> dict:
    from worker_app_fastwan.pipelines.wan import WanGenerator, WanParts
    from worker_app_fastwan.schema import JobInput

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    transformer, vae, text_dim = build(args.scale, device, dtype, dtype)
    tokenizer, text_encoder = text_encoder_parts(args.scale, device, dtype, text_dim, args.text_encoder)
    gen = WanGenerator(WanParts(tokenizer, text_encoder, transformer, vae), device)
    job = JobInput(prompt="a red fox running through fresh snow, cinematic", width=args.width, height=args.height,
                   num_frames=args.frames, num_inference_steps=args.steps, seed=0)
    clock = Clock(device)
    with clock("prompt_encoding"):
        embeds = gen._encode_prompt(job.prompt)
    tmp = Path(tempfile.mkdtemp())
    for _ in range(args.warmup):  # both paths once untimed: kernels, cuDNN autotuning, allocator
        run_plain(gen, job, embeds, tmp / "w1.mp4", Clock(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_plain(gen, job, embeds, tmp / "plain.mp4", clock)
    plain_peak = _peak_gb(device)
    _tune_project(transformer, args, device)
    for _ in range(args.warmup):
        run_project(gen, job, embeds, tmp / "w2.mp4", Clock(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_project(gen, job, embeds, tmp / "project.mp4", clock)
    t = clock.times
    return {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "scale": args.scale, "size": f"{args.width}x{args.height}x{args.frames}", "steps": args.steps,
        "torch": torch.__version__, **t,
        "plain_peak_gb": plain_peak, "project_peak_gb": _peak_gb(device),
        "speedup_total": round(t["plain_total"] / t["project_total"], 2),
    }


def _tune_project(transformer, args: argparse.Namespace, device: torch.device) -> None:
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    for backend in filter(None, args.attention.split(",")):
        try:
            transformer.set_attention_backend(backend)
            print(f"attention backend: {backend}")
            break
        except Exception as exc:  # noqa: BLE001 - an optional kernel
            print(f"attention backend {backend} unavailable: {str(exc)[:120]}")
    if args.compile:
        transformer.compile(fullgraph=False, dynamic=False)


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


if __name__ == "__main__":
    main()
