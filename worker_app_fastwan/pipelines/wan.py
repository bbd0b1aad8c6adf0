"""The Wan 2.2 TI2V generation path shared by the `tiny` and `diffusers` backends.

It drives diffusers' own Wan modules and helpers (`encode_prompt`, `prepare_latents`, the scheduler, the
VAE decoder) with a short loop of its own, because the plain `WanPipeline.__call__`:
- gives every token its own timestep (`expand_timesteps`) even for text-to-video, where all are equal; that
  builds a (B, S, 6, D) fp32 tensor in the transformer, so t2v here passes one scalar timestep instead;
- re-noises without a generator (a seed would not reproduce a video);
- decodes the whole video before returning; here frames are yielded per latent frame, so MP4 encoding
  overlaps decoding.
`tests/unit/pipelines/test_pipeline.py` checks that this path matches the plain pipeline call for t2v and i2v.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
from PIL import Image, ImageOps

from worker_app_fastwan.core.schema import JobInput, Stage
from worker_app_fastwan.pipelines.base import Generation, ProgressCallback
from worker_app_fastwan.pipelines.dmd import DMDScheduler, make_scheduler

MAX_PROMPT_TOKENS = 512


@dataclass
class WanParts:
    tokenizer: object
    text_encoder: torch.nn.Module
    transformer: torch.nn.Module
    vae: torch.nn.Module


class WanGenerator:
    def __init__(self, parts: WanParts, device: torch.device) -> None:
        self.device = device
        scheduler = make_scheduler()
        common = dict(
            tokenizer=parts.tokenizer,
            text_encoder=parts.text_encoder,
            vae=parts.vae,
            transformer=parts.transformer,
            scheduler=scheduler,
            transformer_2=None,
            boundary_ratio=None,
            expand_timesteps=True,
        )
        # Two pipeline objects over the same modules: t2v helpers from one, i2v conditioning from the other.
        self.t2v = WanPipeline(**common)
        self.i2v = WanImageToVideoPipeline(image_encoder=None, image_processor=None, **common)
        self.t2v.set_progress_bar_config(disable=True)
        self.i2v.set_progress_bar_config(disable=True)

    @property
    def scheduler(self) -> DMDScheduler:
        return self.t2v.scheduler

    @property
    def vae(self) -> torch.nn.Module:
        return self.t2v.vae

    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        assert job.seed is not None, "the runner picks the seed before the job reaches the GPU"
        latents = self.denoise(job, image, progress)
        progress(Stage.decoding.value, None, None)
        return Generation(seed=job.seed, num_frames=job.num_frames, frames=self.decode_stream(latents))

    @torch.inference_mode()
    def denoise(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> torch.Tensor:
        """Latents of the finished video in float32 (normalised, as the transformer sees them)."""
        generator = torch.Generator("cpu").manual_seed(job.seed or 0)
        # `finally`: a job cancelled, timed out or out of memory part-way must not leave its component on
        # the GPU under model CPU offload; the next job's text encoder would be loaded beside it.
        try:
            progress(Stage.encoding_prompt.value, None, None)
            embeds = self._encode_prompt(job.prompt)
            self.release_offloaded()
            latents, condition, mask = self._initial_latents(job, image, generator)
            self.release_offloaded()  # i2v: the VAE that encoded the image leaves before the transformer comes
            steps = job.num_inference_steps
            self.scheduler.set_timesteps(steps, device=self.device)
            dtype = self.t2v.transformer.dtype
            progress(Stage.denoising.value, 0, steps)
            for i, t in enumerate(self.scheduler.timesteps):
                if mask is None:
                    model_in, timestep = latents, t.expand(latents.shape[0])
                else:
                    # i2v: frame 0 is the encoded image at every step and its tokens get timestep 0.
                    model_in = (1 - mask) * condition + mask * latents
                    timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0)
                noise_pred = self.t2v.transformer(
                    hidden_states=model_in.to(dtype), timestep=timestep, encoder_hidden_states=embeds, return_dict=False
                )[0]
                # float32 in, float32 out: the step casts its result to the model output's dtype, and bf16
                # latents would carry bf16 rounding into the next step and into the VAE.
                latents = self.scheduler.step(noise_pred.float(), t, latents, generator=generator, return_dict=False)[0]
                progress(Stage.denoising.value, i + 1, steps)
            if mask is not None:
                latents = (1 - mask) * condition + mask * latents
        finally:
            self.release_offloaded()
        return latents

    def release_offloaded(self) -> None:
        """Under model CPU offload, send every component back to the CPU now.

        diffusers chains the offload hooks text encoder → transformer → VAE and only a component's successor
        evicts it; its own pipelines call `maybe_free_model_hooks()` at the end of `__call__`, which this
        loop never runs. Without this the VAE would stay on the GPU after a decode (and the text encoder
        during an image encode), so a phase would hold two components where the budget counts one.
        No-op without model CPU offload.
        """
        if getattr(self.t2v, "_all_hooks", None):
            self.t2v.maybe_free_model_hooks()

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        # 512 tokens as in `WanPipeline.__call__` (encode_prompt's own default is 226).
        embeds, _ = self.t2v.encode_prompt(
            prompt=prompt, do_classifier_free_guidance=False, max_sequence_length=MAX_PROMPT_TOKENS, device=self.device
        )
        return embeds.to(self.t2v.transformer.dtype)

    def _initial_latents(self, job: JobInput, image: Image.Image | None, generator: torch.Generator):
        channels = self.t2v.transformer.config.in_channels
        if image is None:
            latents = self.t2v.prepare_latents(
                1, channels, job.height, job.width, job.num_frames, torch.float32, self.device, generator
            )
            return latents, None, None
        pixels = self.preprocess_image(image, job.width, job.height)
        return self.i2v.prepare_latents(
            pixels, 1, channels, job.height, job.width, job.num_frames, torch.float32, self.device, generator
        )

    def preprocess_image(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        """Centre-crop to the video's aspect ratio, then scale: the image fills the frame undistorted."""
        fitted = ImageOps.fit(image.convert("RGB"), (width, height), method=Image.Resampling.LANCZOS)
        return self.i2v.video_processor.preprocess(fitted, height=height, width=width).to(self.device, torch.float32)

    @torch.inference_mode()
    def encode_image_latent(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        """The normalised latent of `image` alone: what i2v puts in latent frame 0."""
        pixels = self.preprocess_image(image, width, height).unsqueeze(2).to(self.vae.dtype)
        latent = self.vae.encode(pixels).latent_dist.mode().float()
        mean, inv_std = self._latent_stats(latent)
        return (latent - mean) * inv_std

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    @torch.inference_mode()
    def decode_stream(self, latents: torch.Tensor) -> Iterator[np.ndarray]:
        """Decode latent frame by latent frame (1 video frame, then 4 each), yielding uint8 (n, H, W, 3).

        This is `AutoencoderKLWan._decode`'s own causal loop, unrolled so that each chunk can be encoded
        while the next one decodes. Tiling (large videos on small cards) has no such loop: decode whole.
        The latents are un-normalised in float32 and only then cast to the decoder's dtype.
        The loop calls `post_quant_conv` and `decoder` directly, past the offload hook that `vae.decode`
        runs, so it runs that hook itself and refuses to decode on a device other than the generator's.
        """
        vae = self.vae
        decoder_dtype = vae.post_quant_conv.weight.dtype
        mean, inv_std = self._latent_stats(latents.float())
        z = (latents.float() / inv_std + mean).to(decoder_dtype)
        try:
            if vae.use_tiling:
                yield _to_uint8(vae.decode(z, return_dict=False)[0])
                return
            _run_offload_hook(vae)
            require_on_device({"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder}, self.device)
            vae.clear_cache()
            try:
                x = vae.post_quant_conv(z)
                for i in range(x.shape[2]):
                    vae._conv_idx = [0]
                    out = vae.decoder(
                        x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=(i == 0)
                    )
                    if vae.config.patch_size is not None:
                        out = unpatchify(out, patch_size=vae.config.patch_size)
                    yield _to_uint8(out)
            finally:
                vae.clear_cache()
        finally:
            self.release_offloaded()


def _run_offload_hook(module: torch.nn.Module) -> None:
    """What diffusers' `apply_forward_hook` does before `vae.decode`: model CPU offload's hook brings the
    module to the GPU (and sends the one before it in the chain back). No hook, nothing to do."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


def same_device(a: torch.device, b: torch.device) -> bool:
    """`cuda` and `cuda:0` are one device (as are `cpu` and `cpu:0`)."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def require_on_device(modules: dict[str, Any], device: torch.device) -> None:
    """Raise, naming the module, when one of `modules` has weights off `device`: decoding there would
    either fail on a device mismatch or run, slowly, on the CPU."""
    for name, module in modules.items():
        for param in module.parameters():
            if not same_device(param.device, device):
                raise RuntimeError(f"the VAE's {name} is on {param.device}, not on {device}: refusing to decode")


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(1, 3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8, converted on the device so the copy is 4x smaller.

    In float32: bf16 keeps 8 significant bits, so (x + 1) · 127.5 would round to the wrong level above 128.
    """
    video = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).contiguous().cpu().numpy()
