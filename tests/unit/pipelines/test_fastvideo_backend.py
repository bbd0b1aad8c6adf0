"""The `fastvideo` backend's load options, checked against FastVideo 0.2.1's own names and defaults.

FastVideo is not installed here (it pins its own torch), so a stand-in `fastvideo` module records what the
backend hands `VideoGenerator.from_pretrained`, and FastVideo 0.2.1's rules are applied to it: the option
names it knows (anything else lands in its "experimental" bag, ignored) and its offload defaults.
"""

from __future__ import annotations

import sys
import types

import pytest

# fastvideo 0.2.1, fastvideo/entrypoints/video_generator.py: _FROM_PRETRAINED_CONVENIENCE_KWARGS
FASTVIDEO_021_FROM_PRETRAINED_KWARGS = frozenset(
    {
        "num_gpus",
        "revision",
        "trust_remote_code",
        "distributed_executor_backend",
        "tp_size",
        "sp_size",
        "hsdp_replicate_dim",
        "hsdp_shard_dim",
        "dist_timeout",
        "use_fsdp_inference",
        "disable_autocast",
        "enable_stage_verification",
        "dit_cpu_offload",
        "dit_layerwise_offload",
        "text_encoder_cpu_offload",
        "image_encoder_cpu_offload",
        "vae_cpu_offload",
        "pin_cpu_memory",
        "enable_torch_compile",
        "torch_compile_kwargs",
        "lora_path",
        "lora_strength",
        "output_type",
        "nvfp4_fa4",
    }
)
# fastvideo 0.2.1, fastvideo/fastvideo_args.py (FastVideoArgs): the offload defaults.
FASTVIDEO_021_OFFLOAD_DEFAULTS = {
    "dit_cpu_offload": True,
    "use_fsdp_inference": False,
    "dit_layerwise_offload": True,
    "text_encoder_cpu_offload": True,
    "image_encoder_cpu_offload": True,
    "vae_cpu_offload": True,
    "pin_cpu_memory": True,
}


def resolved_offload(kwargs: dict[str, object]) -> dict[str, object]:
    """FastVideo 0.2.1's offload flags after these keywords (fastvideo_args.py, `_resolve_device_offload_
    conflicts`: layer-wise offload turns plain DiT offload and FSDP inference off)."""
    passed = {k: v for k, v in kwargs.items() if k in FASTVIDEO_021_OFFLOAD_DEFAULTS}
    flags = {**FASTVIDEO_021_OFFLOAD_DEFAULTS, **passed}
    if flags["dit_layerwise_offload"]:
        flags["dit_cpu_offload"] = flags["use_fsdp_inference"] = False
    return flags


@pytest.fixture
def fake_fastvideo(monkeypatch):
    calls: list[tuple[str, dict[str, object]]] = []

    class VideoGenerator:
        @classmethod
        def from_pretrained(cls, model_path: str, **kwargs: object) -> VideoGenerator:
            calls.append((model_path, kwargs))
            return cls()

    monkeypatch.setitem(sys.modules, "fastvideo", types.SimpleNamespace(VideoGenerator=VideoGenerator))
    return calls


def test_the_backend_keeps_the_transformer_and_vae_on_the_gpu_and_pins_the_text_encoder(fake_fastvideo):
    """issue 24, item 6: FastVideo 0.2.1 streams the transformer from host memory at every step unless
    `dit_layerwise_offload` is off, and the backend's budget counts it on the GPU."""
    from worker_app_fastwan.pipelines.fastvideo_backend import FastVideoBackend

    FastVideoBackend("FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers", "fastwan").load()
    [(model, kwargs)] = fake_fastvideo
    assert model == "FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers"
    unknown = set(kwargs) - FASTVIDEO_021_FROM_PRETRAINED_KWARGS
    assert not unknown, f"FastVideo 0.2.1 would ignore {sorted(unknown)}"
    assert kwargs["num_gpus"] == 1
    flags = resolved_offload(kwargs)
    assert flags["dit_layerwise_offload"] is False, "the transformer is not streamed layer by layer"
    assert flags["dit_cpu_offload"] is False and flags["vae_cpu_offload"] is False
    assert flags["text_encoder_cpu_offload"] is True, "the 22.8 GB float32 text encoder waits in host memory"
    assert flags["pin_cpu_memory"] is True, "pinned: its copies to the GPU are asynchronous and fast"


def test_resolved_offload_follows_fastvideo():
    """The stand-in's rules: nothing passed means FastVideo's defaults, layer-wise offload on."""
    flags = resolved_offload({})
    assert flags["dit_layerwise_offload"] is True and flags["dit_cpu_offload"] is False
