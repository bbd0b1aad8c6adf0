"""Train the miniature from nothing on this machine's CPU: `make train-miniature`
(`python -m worker_app_fastwan.miniature.train`).

Three stages, each printing its progress and loss:
1. the VAE, on short crops of the world (single frames first, then 1 + 4 frames: the first latent frame and
   one causal chunk), through the very chunked encode/decode loops diffusers runs at inference;
2. latents: clips of the world encoded by that VAE (the latent mean, as image-to-video's encoding takes it),
   and the per-channel mean and std that become the VAE config's `latents_mean` / `latents_std`, which the
   production path normalises with;
3. the transformer and the text encoder together, as a flow-matching denoiser at exactly the three DMD
   sigmas the production sampler visits (1.0, 0.757, 0.522): from x_t = (1 - s) x0 + s e it predicts
   v = e - x0, so that the sampler's x0 = x_t - s v. A third of the clips are image-to-video: latent frame 0
   is clean with timestep 0 on its tokens, as the production path conditions it, and is not scored.

Everything comes from the seed (the world's clips, the initial weights, the noise); the same seed, thread
count and library versions give the same weights. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from worker_app_fastwan.miniature import parts as P
from worker_app_fastwan.miniature.record import Log, commit_of_script, cpu_seconds, versions
from worker_app_fastwan.miniature.world import BACKGROUND, PALETTE, PHRASINGS, Spec, all_specs, coverage, place

DMD_SIGMAS = (1.0, 0.757, 0.522)


@dataclass(frozen=True)
class ClipSet:
    """Clips of one size for the denoiser: how many are encoded, how many go in a batch (about the same
    number of tokens per batch whatever the size), and the share of the training steps they get."""

    side: int
    frames: int
    count: int
    batch: int
    share: float
    anywhere: bool = False  # placed anywhere (image-to-video inputs): always trained as image-to-video


@dataclass(frozen=True)
class Plan:
    """How much of each stage; `FULL` is what the shipped weights were trained with."""

    vae_image_steps: int = 400
    vae_video_steps: int = 600
    vae_batch: int = 16
    vae_video_batch: int = 8
    vae_crop: int = 64
    vae_lr: float = 3e-3
    vae_kl: float = 1e-4
    # 128x128x17: 80 tokens a clip; 256x256x33: 576. Text-to-video clips (one per prompt: the world fixes
    # their size and path) and image-to-video ones (anywhere in the frame, any size: what an input image may
    # show), at the smallest size the protocol takes and at twice that with twice the frames.
    clips: tuple[ClipSet, ...] = (
        ClipSet(128, 17, 120, 16, 0.35),
        ClipSet(128, 17, 480, 16, 0.35, anywhere=True),
        ClipSet(256, 33, 60, 2, 0.15),
        ClipSet(256, 33, 120, 2, 0.15, anywhere=True),
    )
    encode_batch: int = 8
    steps: int = 3500
    lr: float = 1e-3
    i2v_share: float = 0.15  # of the text-to-video clips, also trained as image-to-video
    check_clips: int = 12  # generated through the production path at the end, for the record


FULL = Plan()
# A few steps of each stage: what the smoke test runs (seconds, not minutes).
SMOKE = Plan(
    vae_image_steps=4,
    vae_video_steps=4,
    vae_batch=4,
    vae_video_batch=2,
    vae_crop=32,
    clips=(ClipSet(128, 17, 8, 4, 0.5), ClipSet(128, 33, 2, 2, 0.5, anywhere=True)),
    steps=10,
    check_clips=0,
)


# ---- stage 1: the VAE ---------------------------------------------------------------------------------


def vae_crop(rng: np.random.Generator, crop: int, frames: int) -> np.ndarray:
    """(frames, crop, crop, 3) uint8: a window of a world clip (128 or 256 wide, 17 or 33 frames) around
    its object, so the VAE sees the object's sizes and speeds at both scales at a fraction of the cost."""
    specs = all_specs()
    spec = specs[int(rng.integers(len(specs)))]
    side = 128 if rng.random() < 0.7 else 256
    length = 17 if rng.random() < 0.6 else 33
    placement = place(spec, side, side, rng, anywhere=bool(rng.random() < 0.5))
    first = int(rng.integers(0, length - frames + 1))
    cx, cy = placement.centre(first / (length - 1))
    ox = int(np.clip(cx - crop / 2 + rng.uniform(-crop / 2, crop / 2), 0, side - crop))
    oy = int(np.clip(cy - crop / 2 + rng.uniform(-crop / 2, crop / 2), 0, side - crop))
    colour, background = np.array(PALETTE[spec.colour], np.float32), np.array(BACKGROUND, np.float32)
    out = np.empty((frames, crop, crop, 3), np.uint8)
    for k in range(frames):
        x, y = placement.centre((first + k) / (length - 1))
        alpha = coverage(spec.shape, x - ox, y - oy, placement.size, crop, crop)[..., None]
        out[k] = np.rint(background + alpha * (colour - background)).astype(np.uint8)
    return out


def to_tensor(clips: np.ndarray) -> Any:
    """(B, F, H, W, 3) uint8 -> (B, 3, F, H, W) float32 in [-1, 1], as the pipeline's video processor gives."""
    import torch

    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def decode_for_training(vae: Any, z: Any) -> Any:
    """`AutoencoderKLWan._decode`'s causal loop (one latent frame at a time, with its feature cache), but
    without the final clamp to [-1, 1], whose zero gradient would stop an overshooting pixel from learning."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    x = vae.post_quant_conv(z)
    chunks = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        chunks.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=(i == 0))
        )
    vae.clear_cache()
    return unpatchify(torch.cat(chunks, 2), patch_size=vae.config.patch_size)


def vae_loss(vae: Any, x: Any, kl_weight: float) -> tuple[Any, Any]:
    """(loss to minimise, the reconstruction part) of one batch `x` (B, 3, F, H, W) in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    moments = vae._encode(x)
    mean, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
    recon = decode_for_training(vae, z)
    # The object is a few percent of the pixels: weigh it (and a band around it) five times.
    background = (torch.tensor(BACKGROUND, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1, 1)
    near = ((x - background).abs().amax(1, keepdim=True) > 0.05).float()
    weight = 1 + 4 * F.max_pool3d(near, (1, 5, 5), 1, (0, 2, 2))
    error = recon - x
    rec = (weight * error.abs()).mean() + (weight * error**2).mean()
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
    return rec + kl_weight * kl, rec


def train_vae(vae: Any, plan: Plan, rng: np.random.Generator, log: Log) -> dict[str, float]:
    import torch

    opt = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    total = plan.vae_image_steps + plan.vae_video_steps
    vae.train()
    recent: list[float] = []
    for step in range(total):
        for group in opt.param_groups:
            group["lr"] = _schedule(plan.vae_lr, step, total, warmup=min(50, total // 10 + 1))
        # Single frames first (what image-to-video encodes; cheap), then clips of two or four chunks after
        # the first frame: a chunk's feature cache then comes from a chunk, as for every later chunk.
        video = step >= plan.vae_image_steps
        frames = (17 if step % 4 == 3 else 9) if video else 1
        batch = plan.vae_video_batch if video else plan.vae_batch
        x = to_tensor(np.stack([vae_crop(rng, plan.vae_crop, frames) for _ in range(batch)]))
        loss, rec = vae_loss(vae, x, plan.vae_kl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        recent = (recent + [rec.item()])[-50:]
        log.loss("vae", step, total, rec.item(), every=25)
    vae.eval()
    return {"vae_final_loss": round(float(np.mean(recent)), 4)}


def _schedule(peak: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then a cosine down to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# ---- stage 2: latents ---------------------------------------------------------------------------------


@dataclass
class Latents:
    """Normalised latents of one clip size, and the spec each clip shows."""

    values: Any  # (N, 48, f, h, w) float32
    specs: list[Spec]
    batch: int
    share: float
    anywhere: bool


def encode_clips(vae: Any, plan: Plan, rng: np.random.Generator, log: Log) -> tuple[list[Latents], Any, Any]:
    """The clips of `plan.clips` encoded (latent mean), and the per-channel mean and std over all of them."""
    import torch

    from worker_app_fastwan.miniature.world import clip

    specs = all_specs()
    raw: list[tuple[Any, list[Spec]]] = []
    with torch.inference_mode():
        for clip_set in plan.clips:
            side, frames, count = clip_set.side, clip_set.frames, clip_set.count
            chunks, shown = [], []
            for start in range(0, count, plan.encode_batch):
                # Every spec in turn: a text-to-video set is then the whole world, each prompt as often.
                batch = [specs[(start + i) % len(specs)] for i in range(min(plan.encode_batch, count - start))]
                seeds = [int(rng.integers(2**31)) for _ in batch]
                pixels = np.stack(
                    [clip(s, side, side, frames, seed, clip_set.anywhere) for s, seed in zip(batch, seeds, strict=True)]
                )
                chunks.append(vae._encode(to_tensor(pixels))[:, : vae.config.z_dim].float())
                vae.clear_cache()
                shown += batch
            log(f"latents: {count} clips of {side}x{side}x{frames} encoded")
            raw.append((torch.cat(chunks), shown))
    flat = torch.cat([values.transpose(0, 1).flatten(1) for values, _ in raw], dim=1)
    mean, std = flat.mean(dim=1), flat.std(dim=1).clamp_min(1e-3)
    view = (1, -1, 1, 1, 1)
    sets = [
        Latents((values - mean.view(view)) / std.view(view), shown, clip_set.batch, clip_set.share, clip_set.anywhere)
        for (values, shown), clip_set in zip(raw, plan.clips, strict=True)
    ]
    return sets, mean, std


# ---- stage 3: transformer and text encoder ------------------------------------------------------------


def prompt_embeddings(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> Any:
    """What `WanPipeline._get_t5_prompt_embeds` gives (UMT5 states of the real tokens, zeros up to 512), run
    only over the longest prompt's tokens: the masked padding changes nothing in the real tokens' states."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    encoded = tokenizer([prompt_clean(p) for p in prompts], padding="longest", return_tensors="pt")
    states = text_encoder(encoded.input_ids, encoded.attention_mask).last_hidden_state
    out = states.new_zeros(len(prompts), P.MAX_TOKENS, states.shape[-1])
    for i, length in enumerate(encoded.attention_mask.sum(dim=1).tolist()):
        out[i, :length] = states[i, :length]
    return out


def denoiser_loss(parts: Any, x0: Any, prompts: list[str], sigma: Any, noise: Any, i2v: Any) -> Any:
    """Per-clip loss (B,) of the transformer's v-prediction on `x0` (B, 48, f, h, w) noised to `sigma` (B,);
    clips where `i2v` (B,) bool is set are conditioned on their clean latent frame 0, as the production
    path conditions image-to-video, and are not scored on it."""
    import torch

    transformer = parts.transformer
    sigma = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - sigma) * x0 + sigma * noise
    mask = torch.ones_like(x0[:, :1])
    mask[i2v, :, 0] = 0
    noisy = (1 - mask) * x0 + mask * noisy
    # One timestep per token (Wan 2.2 TI2V's expand_timesteps): 0 on the clean frame's tokens.
    _, patch_h, patch_w = transformer.config.patch_size
    timestep = (mask[:, 0, :, ::patch_h, ::patch_w] * sigma.view(-1, 1, 1, 1) * 1000).flatten(1)
    v = transformer(
        hidden_states=noisy,
        timestep=timestep,
        encoder_hidden_states=prompt_embeddings(parts.tokenizer, parts.text_encoder, prompts),
        return_dict=False,
    )[0]
    return (((v - (noise - x0)) ** 2) * mask).flatten(1).sum(1) / (mask.flatten(1).sum(1) * x0.shape[1])


def train_denoiser(parts: Any, sets: list[Latents], plan: Plan, rng: np.random.Generator, log: Log) -> dict[str, float]:
    import torch

    transformer, text_encoder = parts.transformer, parts.text_encoder
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=0.01)
    sigmas = torch.tensor(DMD_SIGMAS)
    weights = np.array([s.share for s in sets], np.float64)
    weights /= weights.sum()
    transformer.train()
    text_encoder.train()
    by_sigma: dict[float, list[float]] = {float(s): [] for s in DMD_SIGMAS}
    for step in range(plan.steps):
        for group in opt.param_groups:
            group["lr"] = _schedule(plan.lr, step, plan.steps, warmup=min(100, plan.steps // 10 + 1))
        data = sets[int(rng.choice(len(sets), p=weights))]
        index = rng.integers(0, len(data.specs), data.batch)
        x0 = data.values[torch.from_numpy(index)]
        prompts = [data.specs[i].prompt(int(rng.integers(len(PHRASINGS)))) for i in index]
        which = torch.from_numpy(rng.integers(0, len(DMD_SIGMAS), data.batch))
        noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
        i2v = torch.from_numpy(rng.random(data.batch) < (1.0 if data.anywhere else plan.i2v_share))
        per_clip = denoiser_loss(parts, x0, prompts, sigmas[which], noise, i2v)
        loss = per_clip.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for k, value in zip(which.tolist(), per_clip.tolist(), strict=True):
            by_sigma[DMD_SIGMAS[k]].append(value)
        log.loss("denoiser", step, plan.steps, loss.item(), every=100)
    transformer.eval()
    text_encoder.eval()
    tail = {s: float(np.mean(v[-200:])) for s, v in by_sigma.items() if v}
    return {f"denoiser_final_loss_sigma_{s}": round(v, 4) for s, v in tail.items()}


# ---- the whole run ------------------------------------------------------------------------------------


def train(plan: Plan, seed: int, out: Path, log: Log, vae_from: Path | None = None) -> dict[str, Any]:
    """Train every stage, save the model to `out` (diffusers layout) with `training.json`; returns the record.
    `vae_from`: a model folder whose VAE stage 1 would make again (same seed and plan): reused, not retrained."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    wall0, cpu0 = time.monotonic(), cpu_seconds()
    stages: dict[str, dict[str, float]] = {}

    def timed(name: str, since: tuple[float, float]) -> tuple[float, float]:
        now = (time.monotonic(), cpu_seconds())
        stages[name] = {"wall_s": round(now[0] - since[0], 1), "cpu_s": round(now[1] - since[1], 1)}
        log(f"{name} done: {stages[name]['wall_s']}s wall, {stages[name]['cpu_s']}s CPU")
        return now

    parts = P.build_parts(seed)
    log(f"seed {seed}, {torch.get_num_threads()} threads; plan {asdict(plan)}")
    metrics: dict[str, Any] = {}
    mark = (wall0, cpu0)
    if vae_from is None:
        metrics |= train_vae(parts.vae, plan, rng, log)
    else:
        from safetensors.torch import load_file

        parts.vae.load_state_dict(load_file(vae_from / "vae" / "diffusion_pytorch_model.safetensors"))
        parts.vae.eval()
        log(f"vae: reused from {vae_from}")
    mark = timed("vae", mark)
    # Each stage starts from the seed again, so that a stage can be rerun on its own from a saved VAE and
    # still give what the whole run gives (the shipped weights were made that way: training.json).
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sets, mean, std = encode_clips(parts.vae, plan, rng, log)
    parts.vae.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std])
    mark = timed("latents", mark)
    metrics |= train_denoiser(parts, sets, plan, rng, log)
    mark = timed("denoiser", mark)
    if plan.check_clips:
        metrics |= check(parts, plan.check_clips, log)
        mark = timed("check", mark)
    P.save_parts(parts, out)
    record: dict[str, Any] = {
        "seed": seed,
        "vae_from": None if vae_from is None else str(vae_from),
        "commit": commit_of_script(Path(__file__)),
        "command": "python -m worker_app_fastwan.miniature.train " + " ".join(sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "plan": asdict(plan),
        "wall_s": round(time.monotonic() - wall0, 1),
        "cpu_s": round(cpu_seconds() - cpu0, 1),
        "stages": stages,
        "metrics": metrics,
        "weights_bytes": sum(f.stat().st_size for f in out.rglob("*.safetensors")),
        "versions": versions(),
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log(
        f"saved to {out}: {record['weights_bytes'] / 2**20:.2f} MiB of weights, {record['wall_s']}s wall, "
        f"{record['cpu_s']}s CPU"
    )
    return record


def check(parts: Any, count: int, log: Log) -> dict[str, Any]:
    """A few clips through the production path, measured: the numbers the record keeps (the full grid is
    bench/miniature_eval.py)."""
    import torch

    from worker_app_fastwan.miniature.evaluate import Case, run_cases
    from worker_app_fastwan.pipelines.wan import WanGenerator

    generator = WanGenerator(parts, torch.device("cpu"))
    specs = all_specs()
    cases = [Case(specs[(i * 7) % len(specs)], seed=1000 + i) for i in range(count)]
    cases += [Case(specs[(i * 11 + 3) % len(specs)], seed=2000 + i, i2v=True) for i in range(count // 2)]
    summary = run_cases(generator, cases).summary()
    log(f"check: {summary}")
    return {"check": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=P.WEIGHTS_DIR, help="where to save (default: the shipped folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps of each stage (seconds)")
    parser.add_argument("--steps", type=int, help="denoiser steps (default: the full plan's)")
    parser.add_argument("--vae-from", type=Path, help="reuse this model folder's VAE instead of training one")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.steps:
        plan = replace(plan, steps=args.steps)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train(plan, args.seed, args.out, Log(out=lambda line: print(line, flush=True)), args.vae_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
