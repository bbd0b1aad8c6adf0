"""The miniature's training script: a few steps of each stage lower the loss, and a whole smoke run saves a
model folder the production loader loads and samples. (The real training is never part of the suite.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.torch  # torch in this process: one xdist group (tests/conftest.py)


def test_a_few_steps_of_each_stage_lower_the_loss() -> None:
    import torch

    from worker_app_fastwan.miniature import train
    from worker_app_fastwan.miniature.parts import build_parts
    from worker_app_fastwan.miniature.world import Spec

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    parts = build_parts(seed=0)
    # The VAE on one fixed batch of crops (a first frame and a chunk after it).
    x = train.to_tensor(np.stack([train.vae_crop(rng, 32, 5) for _ in range(2)]))
    opt = torch.optim.AdamW(parts.vae.parameters(), lr=3e-3)
    vae_losses = []
    for _ in range(8):
        loss, rec = train.vae_loss(parts.vae, x, kl_weight=1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        vae_losses.append(rec.item())
    # The transformer and text encoder on fixed latents, one clip conditioned as image-to-video.
    x0 = torch.randn(4, 48, 2, 4, 4)
    prompts = [Spec("red", "square", "left").prompt(), Spec("blue", "circle", "still").prompt(1)] * 2
    sigma, noise = torch.tensor([1.0, 0.757, 0.522, 0.757]), torch.randn_like(x0)
    i2v = torch.tensor([False, True, False, False])
    params = [*parts.transformer.parameters(), *parts.text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3)
    denoiser_losses = []
    for _ in range(8):
        loss = train.denoiser_loss(parts, x0, prompts, sigma, noise, i2v).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        denoiser_losses.append(loss.item())
    assert vae_losses[-1] < 0.8 * vae_losses[0], vae_losses
    assert denoiser_losses[-1] < 0.8 * denoiser_losses[0], denoiser_losses


def test_training_embeds_prompts_as_the_production_pipeline_does() -> None:
    """Training runs UMT5 over the longest prompt only; the sampler pads to 512 tokens first: same states."""
    import torch

    from worker_app_fastwan.miniature.parts import build_parts
    from worker_app_fastwan.miniature.train import prompt_embeddings
    from worker_app_fastwan.pipelines.wan import WanGenerator

    parts = build_parts(seed=1)
    prompts = ["a red square moving left", "the green circle is standing still"]
    ours = prompt_embeddings(parts.tokenizer, parts.text_encoder, prompts)
    generator = WanGenerator(parts, torch.device("cpu"))
    with torch.inference_mode():
        production = torch.cat([generator._encode_prompt(p) for p in prompts])
    torch.testing.assert_close(ours.detach(), production, rtol=1e-5, atol=1e-5)


def test_a_smoke_run_saves_a_model_the_production_loader_samples(tmp_path, capsys) -> None:
    from worker_app_fastwan.core.schema import JobInput
    from worker_app_fastwan.miniature import train
    from worker_app_fastwan.pipelines.tiny import load_miniature
    from worker_app_fastwan.pipelines.wan import WanGenerator

    assert train.main(["--smoke", "--out", str(tmp_path / "model"), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "vae step" in printed and "denoiser step" in printed and "loss" in printed
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["seed"] == 3 and record["commit"] and record["cpu_s"] > 0 and record["metrics"]
    vae_config = json.loads((tmp_path / "model" / "vae" / "config.json").read_text())
    assert vae_config["latents_std"] != [1.0] * 48, "the miniature's own latent statistics are saved"

    import torch

    parts = load_miniature(tmp_path / "model")
    job = JobInput(prompt="a red square moving left", width=128, height=128, num_frames=5, seed=1)
    frames = np.concatenate(list(WanGenerator(parts, torch.device("cpu")).generate(job, None, lambda *_: 0).frames))
    assert frames.shape == (5, 128, 128, 3)
