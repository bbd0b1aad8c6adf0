"""The GPU path's placement, precision, hooks, attention choice and compilation, checked on the CPU.

The real diffusers modules with the miniature's trained weights, loaded through the production loading code; only the
device differs. Where a GPU would move weights, the test records where each component was sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.residency import Residency
from support.video import gradient_image

from worker_app_fastwan.core.schema import JobInput
from worker_app_fastwan.pipelines.base import SMALL_SIZE, warmup_plan

pytestmark = pytest.mark.torch  # torch in this process: one xdist group (tests/conftest.py)

# torch, diffusers and the modules that import them are imported inside each test, not here: every xdist
# worker collects this file, and ~6 s of imports would be paid by each instead of by the one that runs it.


def _job(**kw) -> JobInput:
    base = dict(prompt="a red fox running through snow", width=128, height=128, num_frames=9, seed=7)
    return JobInput(**{**base, **kw})


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from worker_app_fastwan.pipelines.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# ---------------------------------------------------------------- model CPU offload hooks (defect 1)


def test_low_vram_holds_one_component_per_phase_and_releases_all_after_a_job(model_folder):
    import torch

    from worker_app_fastwan.pipelines.diffusers_backend import DiffusersBackend

    backend = DiffusersBackend(model_folder, "tiny", offload_profile="low_vram", device=torch.device("cpu"))
    backend.load()
    gen = backend.generator
    assert gen.t2v._all_hooks, "model CPU offload is on under low_vram"
    parts = {"text_encoder": gen.t2v.text_encoder, "transformer": gen.t2v.transformer, "vae": gen.vae}
    res = Residency(parts)
    res.record_when_running("encode prompt", gen.t2v.text_encoder.encoder)
    res.record_when_running("encode image", gen.vae.encoder)
    res.record_when_running("denoise", gen.t2v.transformer.blocks[0])
    res.record_when_running("decode", gen.vae.decoder)
    image = gradient_image(128, 128, seed=1)
    for job, img in ((_job(image_url="http://example.com/x.png"), image), (_job(seed=8), None)):
        res.seen.clear()
        frames = np.concatenate(list(backend.generate(job, img, lambda *_: None).frames))
        assert frames.shape == (9, 128, 128, 3)
        owner = {"encode prompt": "text_encoder", "encode image": "vae", "denoise": "transformer", "decode": "vae"}
        assert res.seen, "the phases ran"
        for phase, on_gpu in res.seen:
            assert on_gpu == {owner[phase]}, (phase, sorted(on_gpu))
        assert {phase for phase, _ in res.seen} >= {"encode prompt", "denoise", "decode"}
        assert res.on_gpu() == frozenset(), "nothing stays on the GPU between jobs"


def _low_vram_backend(model_folder):
    """The `diffusers` backend under model CPU offload, and where each of its components is."""
    import torch

    from worker_app_fastwan.pipelines.diffusers_backend import DiffusersBackend

    backend = DiffusersBackend(model_folder, "tiny", offload_profile="low_vram", device=torch.device("cpu"))
    backend.load()
    gen = backend.generator
    res = Residency({"text_encoder": gen.t2v.text_encoder, "transformer": gen.t2v.transformer, "vae": gen.vae})
    return backend, res


def _one_component_per_phase(backend, res: Residency) -> None:
    """The next job runs with one component on the GPU in each phase, and nothing is left after it."""
    gen = backend.generator
    res.record_when_running("encode prompt", gen.t2v.text_encoder.encoder)
    res.record_when_running("denoise", gen.t2v.transformer.blocks[0])
    res.record_when_running("decode", gen.vae.decoder)
    res.seen.clear()
    frames = np.concatenate(list(backend.generate(_job(seed=3), None, lambda *_: None).frames))
    assert frames.shape == (9, 128, 128, 3)
    owner = {"encode prompt": "text_encoder", "denoise": "transformer", "decode": "vae"}
    assert {phase for phase, _ in res.seen} == set(owner)
    for phase, on_gpu in res.seen:
        assert on_gpu == {owner[phase]}, (phase, sorted(on_gpu))
    assert res.on_gpu() == frozenset()


def test_low_vram_job_stopped_mid_denoise_leaves_no_component_on_the_gpu(model_folder):
    """issue 24, item 1: a cancel (or timeout, or OOM) raised at a denoising step must not leave the
    transformer on the GPU, where the next job's text encoder would be loaded beside it."""
    from worker_app_fastwan.core.errors import JobFailure
    from worker_app_fastwan.core.schema import ErrorCode, Stage

    backend, res = _low_vram_backend(model_folder)
    at_the_stop: list[frozenset[str]] = []

    def cancel_at_step_1(stage: str, step: int | None, total: int | None) -> None:
        if stage == Stage.denoising.value and step == 1:
            at_the_stop.append(res.on_gpu())
            raise JobFailure(ErrorCode.cancelled, "cancelled at a safe point")

    with pytest.raises(JobFailure, match="cancelled"):
        backend.generate(_job(), None, cancel_at_step_1)
    assert at_the_stop == [{"transformer"}], "the stop came mid-denoise, with the transformer on the GPU"
    assert res.where == {"text_encoder": "cpu", "transformer": "cpu", "vae": "cpu"}
    _one_component_per_phase(backend, res)


def test_free_memory_sends_back_what_an_abandoned_decode_left_on_the_gpu(model_folder):
    """A decode stopped half-way (its generator neither finished nor closed yet) holds the VAE on the GPU;
    `free_memory()`, which the GPU process calls after every failed job, sends it back."""
    backend, res = _low_vram_backend(model_folder)
    frames = backend.generate(_job(), None, lambda *_: None).frames
    next(frames)
    assert res.on_gpu() == {"vae"}
    backend.free_memory()
    assert res.on_gpu() == frozenset()
    _one_component_per_phase(backend, res)
    frames.close()


@pytest.mark.parametrize("failure", ["cancelled", "error", "oom"])
def test_the_gpu_process_frees_memory_after_every_failed_job(failure):
    """gpu_child.main: not only after an OOM; a cancelled or failed job may leave a component on the GPU too."""
    from multiprocessing import Pipe

    import torch

    from worker_app_fastwan.core.errors import JobFailure
    from worker_app_fastwan.core.schema import ErrorCode
    from worker_app_fastwan.gpu_child import main
    from worker_app_fastwan.gpu_child.messages import Failed

    class Backend:
        freed = 0

        def free_memory(self) -> None:
            self.freed += 1

    exc = {
        "cancelled": JobFailure(ErrorCode.cancelled, "cancelled at a safe point"),
        "error": ValueError("something in the pipeline"),
        "oom": torch.OutOfMemoryError("CUDA out of memory."),
    }[failure]
    parent, child = Pipe()
    backend = Backend()
    main._report_failure(child, backend, "job-1", exc)
    assert isinstance(parent.recv(), Failed)
    assert backend.freed == 1


# ---------------------------------------------------------------- the streamed VAE decode (issue 24, item 10)


def test_streamed_decode_brings_the_vae_through_its_offload_hook(model_folder):
    """Model CPU offload without tiling takes the streamed loop, which calls the decoder past `vae.decode`'s
    hook: it must run the hook itself, or it would decode with the VAE left in host memory."""
    backend, res = _low_vram_backend(model_folder)
    backend.generator.vae.disable_tiling()
    _one_component_per_phase(backend, res)


def test_streamed_decode_refuses_a_decoder_off_the_device():
    import torch

    from worker_app_fastwan.pipelines.tiny import TinyBackend

    backend = TinyBackend()
    backend.load()
    gen = backend.generator
    gen.device = torch.device("meta")  # the generator's device; the VAE stays on the CPU
    with pytest.raises(RuntimeError, match="post_quant_conv is on cpu, not on meta"):
        list(gen.decode_stream(torch.zeros(1, 48, 1, 8, 8)))


# ---------------------------------------------------------------- balanced: the text encoder's embedding (item 7)


def _offload_groups(module) -> list:
    """Every diffusers group-offloading group hooked anywhere in `module`."""
    groups = []
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for hook in registry.hooks.values() if registry is not None else ():
            if getattr(hook, "group", None) is not None:
                groups.append(hook.group)
    return groups


def test_balanced_streams_the_blocks_and_keeps_the_token_embedding_out_of_every_group(model_folder):
    """issue 24, item 7: in an offload group the 2.1 GB embedding would be copied to the GPU and back, from
    pageable memory, at every prompt. It stays in host memory; the blocks are streamed."""
    import torch

    from worker_app_fastwan.pipelines.diffusers_backend import DiffusersBackend

    backend = DiffusersBackend(model_folder, "tiny", offload_profile="balanced", device=torch.device("cpu"))
    backend.load()
    text_encoder = backend.generator.t2v.text_encoder
    moved = set()
    for group in _offload_groups(text_encoder):
        moved |= {id(p) for m in group.modules for p in m.parameters()} | {id(p) for p in group.parameters}
    blocks = {id(p) for p in text_encoder.encoder.block.parameters()}
    assert blocks and blocks <= moved, "the blocks are streamed"
    embedding = text_encoder.encoder.embed_tokens
    assert embedding.weight is text_encoder.shared.weight, "still the one (tied) embedding"
    assert id(embedding.weight) not in moved
    assert embedding.weight.device.type == "cpu"


def test_the_host_embedding_looks_up_on_the_host_and_hands_the_rows_to_the_device():
    import torch

    from worker_app_fastwan.pipelines.text_encoder_offload import look_up_on_host

    embedding = torch.nn.Embedding(64, 8)
    expected = embedding(torch.tensor([[1, 2, 3]]))
    look_up_on_host(embedding, torch.device("meta"))  # a device other than the host's, on a CPU machine
    rows = embedding(torch.tensor([[1, 2, 3]]))
    assert rows.device.type == "meta" and rows.shape == expected.shape
    assert embedding.weight.device.type == "cpu"


# ---------------------------------------------------------------- precision (defects 3 and 4)


def test_precision_defaults():
    import torch

    from worker_app_fastwan.pipelines.diffusers_backend import Precision, precision_for

    cuda = precision_for(True)
    assert cuda == Precision(torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16)
    assert precision_for(True, "float32").vae_decoder == torch.float32
    assert precision_for(True, "float32").vae_encoder == torch.float32
    assert set(vars(precision_for(False)).values()) == {torch.float32}


@pytest.fixture(scope="module")
def cuda_like(model_folder):
    """The production dtypes (bf16 transformer and text encoder, fp32 VAE encoder, bf16 decoder), on the CPU."""
    import torch

    from worker_app_fastwan.pipelines.diffusers_backend import DiffusersBackend, precision_for

    backend = DiffusersBackend(
        model_folder, "tiny", offload_profile="none", device=torch.device("cpu"), precision=precision_for(True)
    )
    backend.load()
    return backend


def test_vae_encoder_float32_decoder_bfloat16_by_default(cuda_like):
    import torch

    vae = cuda_like.generator.vae
    assert {p.dtype for p in vae.encoder.parameters()} | {p.dtype for p in vae.quant_conv.parameters()} == {
        torch.float32
    }
    assert {p.dtype for p in vae.decoder.parameters()} | {p.dtype for p in vae.post_quant_conv.parameters()} == {
        torch.bfloat16
    }
    assert vae.dtype == torch.float32, "diffusers casts the image to vae.dtype before encoding: float32"
    assert {p.dtype for p in cuda_like.generator.t2v.transformer.parameters()} <= {torch.bfloat16, torch.float32}
    assert cuda_like.vae_decode_dtype == "bfloat16"


def test_image_is_encoded_in_float32(cuda_like):
    import torch

    seen = []
    cuda_like.generator.vae.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    cuda_like.generator.denoise(_job(image_url="http://example.com/x.png"), gradient_image(128, 128), lambda *_: None)
    assert seen and set(seen) == {torch.float32}


def test_bf16_transformer_leaves_float32_latents(cuda_like):
    import torch

    latents = cuda_like.generator.denoise(_job(), None, lambda *_: None)
    assert latents.dtype == torch.float32


def test_production_dtypes_make_a_video_close_to_float32(cuda_like, model_folder):
    import torch

    from worker_app_fastwan.pipelines.diffusers_backend import DiffusersBackend

    fp32 = DiffusersBackend(model_folder, "tiny", offload_profile="none", device=torch.device("cpu"))
    fp32.load()
    job = _job(seed=5)
    a = np.concatenate(list(cuda_like.generate(job, None, lambda *_: None).frames)).astype(int)
    b = np.concatenate(list(fp32.generate(job, None, lambda *_: None).frames)).astype(int)
    assert a.shape == b.shape == (9, 128, 128, 3)
    assert np.abs(a - b).mean() < 8, "bf16 compute changes pixels a little, not the video"


def test_latents_are_unnormalised_in_float32_before_the_bf16_decoder():
    import torch

    from worker_app_fastwan.pipelines.tiny import TinyBackend

    backend = TinyBackend()
    backend.load()
    gen = backend.generator
    vae = gen.vae
    rng = np.random.default_rng(0)
    vae.register_to_config(latents_mean=rng.normal(0, 0.5, 48).tolist(), latents_std=rng.uniform(0.4, 3.0, 48).tolist())
    vae.post_quant_conv.to(torch.bfloat16)
    vae.decoder.to(torch.bfloat16)
    seen = []
    vae.post_quant_conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    latents = torch.randn(1, 48, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    list(gen.decode_stream(latents))
    mean = torch.tensor(vae.config.latents_mean).view(1, 48, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 48, 1, 1, 1)
    expected = (latents * std + mean).to(torch.bfloat16)
    in_bf16 = latents.bfloat16() / (1.0 / std).bfloat16() + mean.bfloat16()
    assert seen[0].dtype == torch.bfloat16
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)
    assert not torch.equal(in_bf16, expected), "the test distinguishes the two orders"


def test_uint8_conversion_is_done_in_float32():
    import torch

    from worker_app_fastwan.pipelines.wan import _to_uint8

    values = torch.linspace(-1, 1, 3 * 1366).view(1, 3, 1, 1, 1366)
    video = values.bfloat16()
    exact = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(_to_uint8(video), exact)
    in_bf16 = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    assert (in_bf16 != exact).any(), "bf16 arithmetic rounds some levels differently"


# ---------------------------------------------------------------- the schedule (defects 2 and 10)


@pytest.mark.parametrize("steps", [0, 4, 8])
def test_undistilled_step_counts_are_refused(steps):
    from worker_app_fastwan.pipelines.dmd import dmd_timesteps

    with pytest.raises(ValueError, match="num_inference_steps"):
        dmd_timesteps(steps)
    assert [dmd_timesteps(n) for n in (1, 2, 3)] == [[1000.0], [1000.0, 757.0], [1000.0, 757.0, 522.0]]


def test_last_step_returns_x0_without_drawing_noise():
    import torch

    from worker_app_fastwan.pipelines.dmd import make_scheduler

    scheduler = make_scheduler()
    scheduler.set_timesteps(3)
    sample = torch.randn(1, 48, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    velocity = torch.randn(1, 48, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(3)
    for t in scheduler.timesteps[:-1]:
        before = generator.get_state()
        sample = scheduler.step(velocity, t, sample, generator=generator, return_dict=False)[0]
        assert not torch.equal(before, generator.get_state()), "middle steps re-noise"
    before = generator.get_state()
    last = scheduler.step(velocity, scheduler.timesteps[-1], sample, generator=generator, return_dict=False)[0]
    assert torch.equal(before, generator.get_state()), "no noise drawn at the last step"
    torch.testing.assert_close(last, sample - 0.522 * velocity, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- attention selection (defect 7)


def test_attention_candidate_that_fails_its_probe_falls_back_to_native():
    """`_native_cudnn` selects fine on a CPU and fails at the first forward, like an FA3 build that imports
    but rejects an argument on a GPU: it must be tried, and dropped."""
    from worker_app_fastwan.pipelines.tiny import TinyBackend
    from worker_app_fastwan.pipelines.tuning import choose_attention

    backend = TinyBackend()
    backend.load()
    transformer = backend.generator.t2v.transformer
    assert choose_attention(transformer, ("_native_cudnn",)) == "native"
    backends = {block.attn1.processor._attention_backend.value for block in transformer.blocks}
    assert backends == {"native"}, "the failed candidate is not left selected"
    frames = np.concatenate(list(backend.generate(_job(), None, lambda *_: None).frames))
    assert frames.shape == (9, 128, 128, 3)
    assert choose_attention(transformer, ("_native_cudnn", "_native_math")) == "_native_math"


# ---------------------------------------------------------------- compilation (defect 6)


def test_warmup_plan():
    plain = warmup_plan(compiled=False, i2v=True)
    assert [(i.job.width, i.job.height, i.job.num_frames, i.image is None, i.decode) for i in plain] == [
        (256, 256, 5, True, True)
    ]
    compiled = warmup_plan(compiled=True, i2v=True)
    sizes = [(i.job.width, i.job.height, i.job.num_frames, "i2v" if i.image else "t2v", i.decode) for i in compiled]
    assert sizes == [
        (1280, 704, 121, "t2v", False),
        (256, 256, 5, "t2v", False),
        (1280, 704, 121, "i2v", False),
        (256, 256, 5, "i2v", False),
        (256, 256, 5, "t2v", True),
    ]
    assert JobInput(prompt="x").width == 1280 and JobInput(prompt="x").num_frames == 121, "the default size"
    assert all(i.image is None for i in warmup_plan(compiled=True, i2v=False))


def test_the_diffusers_backend_warms_up_only_what_its_card_admits(model_folder, monkeypatch):
    """issue 24, item 4: compiled, image-to-video on, a 15.6 GiB card under `low_vram`: the default size is
    refused there, so the warm-up takes the most frames admitted at 1280×704 instead (plan only, no load)."""
    import torch

    from worker_app_fastwan.model.offload import check_job_fits, max_frames
    from worker_app_fastwan.pipelines.diffusers_backend import DiffusersBackend

    backend = DiffusersBackend(
        model_folder, "tiny", offload_profile="low_vram", compile_transformer=True, device=torch.device("cpu")
    )
    backend.cuda, backend.profile = True, "low_vram"  # as on that card once loaded
    monkeypatch.setattr(backend, "admission_vram_gib", lambda: 15.6)
    items = backend.warmup_items()
    sizes = [(i.job.width, i.job.height, i.job.num_frames) for i in items]
    assert (1280, 704, 121) not in sizes
    assert (1280, 704, max_frames(1280, 704, 15.6, "low_vram")) in sizes
    assert {i.image is not None for i in items} == {False, True}, "both modes"
    for width, height, frames in sizes:
        check_job_fits(width, height, frames, 15.6, "low_vram")


def test_compiled_blocks_warmed_up_do_not_recompile_in_jobs(caplog):
    """Dynamo's real guards with the `eager` backend (no C++ toolchain needed): after the warm-up plan,
    jobs at a third size in both modes build no new graph; without it, the first job compiles."""
    import torch

    from worker_app_fastwan.pipelines.tiny import TinyBackend
    from worker_app_fastwan.pipelines.tuning import RecompileWatch, compile_blocks

    backend = TinyBackend()
    backend.load()
    gen = backend.generator
    compile_blocks(gen.t2v.transformer, backend="eager")
    torch._dynamo.reset()
    cold = RecompileWatch()
    gen.denoise(_job(width=288, height=256, num_frames=9), None, lambda *_: None)
    assert cold.check("cold job") > 0
    torch._dynamo.reset()
    for item in warmup_plan(compiled=True, i2v=True, default=(320, 256, 13), small=SMALL_SIZE):
        if item.decode:
            list(gen.generate(item.job, item.image, lambda *_: None).frames)
        else:
            gen.denoise(item.job, item.image, lambda *_: None)
    watch = RecompileWatch()
    image = gradient_image(300, 200)
    for job, img in [
        (_job(width=288, height=320, num_frames=17), None),
        (_job(width=288, height=320, num_frames=17, image_url="http://example.com/x.png"), image),
        (_job(width=320, height=256, num_frames=13), None),
    ]:
        gen.denoise(job, img, lambda *_: None)
        assert watch.check(f"{job.width}x{job.height}") == 0, (job.width, job.height, job.mode)
    torch._dynamo.reset()


# ---------------------------------------------------------------- the fastvideo backend's model name (defect 5)


def test_fastvideo_gets_a_registry_name_never_a_hash_named_folder(tmp_path):
    from worker_app_fastwan.core.errors import ModelUnavailable
    from worker_app_fastwan.core.settings import load_settings
    from worker_app_fastwan.pipelines.fastvideo_backend import fastvideo_model

    def settings(**kw):
        return load_settings(env_file=None, PIPELINE_BACKEND="fastvideo", STATE_DIR=tmp_path / "state", **kw)

    assert fastvideo_model(settings()) == "FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers"
    other = "FastVideo/FastWan2.2-TI2V-5B-Diffusers"
    assert fastvideo_model(settings(MODEL_ID=other)) == other
    with pytest.raises(ModelUnavailable, match="MODEL_ID"):
        fastvideo_model(settings(MODEL_ID="someone/wan-fork"))
    # A hub-cache snapshot or a baked folder: FastVideo matches the last path component, so it is reached
    # through a link named after MODEL_ID.
    snapshot = tmp_path / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    linked = fastvideo_model(settings(MODEL_PATH=snapshot))
    assert linked.endswith("/FastWan2.2-TI2V-5B-FullAttn-Diffusers")
    assert Path(linked).resolve() == snapshot.resolve()
    named = tmp_path / "FastWan2.2-TI2V-5B-Diffusers"
    named.mkdir()
    assert fastvideo_model(settings(MODEL_PATH=named)) == str(named.resolve())
