"""The miniature's architecture (the production classes, narrower) and where its trained weights live (the
`tiny` backend loads them from there: pipelines/tiny.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker_app_fastwan.pipelines.tiny import WEIGHTS_DIR

TRAINING_RECORD = WEIGHTS_DIR / "training.json"
MAX_TOKENS = 512  # what the production path pads prompts to (pipelines/wan.py)

# Whole words of the world's prompts, then single characters, so any prompt tokenizes (unknown words
# spell out letter by letter); the word pieces score higher, so a known word is always one token.
WORDS = (
    "a an the is red green blue yellow white purple square circle moving moves left right up down standing still to"
).split()
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789,.-"

TEXT_ENCODER: dict[str, Any] = dict(
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
)
# Wan 2.2 TI2V's transformer options (patch 1x2x2, 48 latent channels, RMS norm across heads, cross-attention
# norm, freq_dim 256, eps 1e-6); only the widths and depth are smaller (3072 wide, 30 layers in production).
TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    # 6 x 32 = 192 wide: no narrower than a latent patch (48 channels x 2 x 2). The sampler reads the output as
    # v = noise - x0, so the model must carry the input's noise through to its output; 128 wide, a third of
    # each patch's noise could not pass, and every step's x0 kept it (a loss floor near 0.5 at every sigma).
    num_attention_heads=6,
    attention_head_dim=32,
    in_channels=48,
    out_channels=48,
    text_dim=TEXT_ENCODER["d_model"],
    freq_dim=256,
    ffn_dim=512,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
# The Wan 2.2 VAE layout: residual down/up blocks, patch size 2, 48 latent channels, 16x spatial and 4x
# temporal compression. Production: base_dim 160, decoder_base_dim 256, num_res_blocks 2.
VAE: dict[str, Any] = dict(
    base_dim=8,
    decoder_base_dim=12,  # wider than the encoder: the decoder draws the corners that tell a square
    z_dim=48,
    in_channels=12,
    out_channels=12,
    is_residual=True,
    patch_size=2,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    temperal_downsample=[False, True, True],
)


def tokenizer() -> Any:
    """A Unigram T5 tokenizer built in memory (no download). extra_ids=0: no 100 sentinel tokens."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + word, -2.0) for word in WORDS]
    pieces += [("▁", -3.0)] + [(c, -5.0) for c in CHARACTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_parts(seed: int, latents_mean: list[float] | None = None, latents_std: list[float] | None = None) -> Any:
    """Freshly initialised parts (what training starts from), deterministic for `seed`."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from worker_app_fastwan.pipelines.wan import WanParts

    tok = tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            **VAE,
            latents_mean=latents_mean or [0.0] * VAE["z_dim"],
            latents_std=latents_std or [1.0] * VAE["z_dim"],
        )
        transformer = WanTransformer3DModel(**TRANSFORMER)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), **TEXT_ENCODER))
    return WanParts(tokenizer=tok, text_encoder=text_encoder, transformer=transformer, vae=vae)


def save_parts(parts: Any, folder: Path) -> Path:
    """The diffusers folder layout, as the production checkpoint has it (loaded by the production loader)."""
    from worker_app_fastwan.pipelines.dmd import make_scheduler

    folder.mkdir(parents=True, exist_ok=True)
    parts.transformer.save_pretrained(folder / "transformer")
    parts.vae.save_pretrained(folder / "vae")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    make_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text('{"_class_name": "WanPipeline", "_diffusers_version": "0.42.1"}\n')
    return folder
