"""The generation core through the real diffusers Wan 2.2 TI2V classes with the miniature's weights (what the
videos show is tests/unit/miniature/test_semantic.py's concern; here: sizes, seeds, progress, equivalences)."""

from __future__ import annotations

import numpy as np
import pytest
from support.video import gradient_image, read_video

from worker_app_fastwan.core.schema import JobInput
from worker_app_fastwan.gpu_child.encoder import encode_mp4

pytestmark = pytest.mark.torch  # torch in this process: one xdist group (tests/conftest.py)


def _job(**kw) -> JobInput:
    base = dict(prompt="a red circle moving right", width=128, height=128, num_frames=9, seed=7)
    return JobInput(**{**base, **kw})


def _frames(backend, job: JobInput, image=None) -> np.ndarray:
    return np.concatenate(list(backend.generate(job, image, lambda *_: None).frames))


def test_t2v_mp4_matches_request(tiny_backend, tmp_path):
    job = _job(width=320, height=256, num_frames=13, fps=12)
    generation = tiny_backend.generate(job, None, lambda *_: None)
    out = tmp_path / "t2v.mp4"
    count = encode_mp4(generation.frames, out, job.width, job.height, job.fps)
    frames, meta = read_video(out)
    assert count == 13
    assert frames.shape == (13, 256, 320, 3)
    assert meta["fps"] == 12
    assert frames.std() > 1.0, "an object on a background, never a flat colour"


def test_i2v_mp4_matches_request(tiny_backend, tmp_path):
    job = _job(width=256, height=320, num_frames=9, image_url="http://example.com/x.png")
    generation = tiny_backend.generate(job, gradient_image(400, 300), lambda *_: None)
    out = tmp_path / "i2v.mp4"
    encode_mp4(generation.frames, out, job.width, job.height, job.fps)
    frames, _ = read_video(out)
    assert frames.shape == (9, 320, 256, 3)


def test_i2v_first_latent_frame_is_the_encoded_image(tiny_backend):
    import torch

    generator = tiny_backend.generator
    image = gradient_image(256, 256, seed=3)
    job = _job(image_url="http://example.com/x.png")
    latents = generator.denoise(job, image, lambda *_: None)
    expected = generator.encode_image_latent(image, job.width, job.height)
    torch.testing.assert_close(latents[:, :, :1], expected, rtol=0, atol=1e-6)
    assert not torch.allclose(latents[:, :, 1:2], expected, atol=1e-3), "only frame 0 is the image"


def test_same_seed_same_video_other_seed_other_video(tiny_backend):
    first, again = _frames(tiny_backend, _job(seed=11)), _frames(tiny_backend, _job(seed=11))
    other = _frames(tiny_backend, _job(seed=12))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1.0


def test_paced_steps_each_last_at_least_the_pace(tiny_backend):
    """`[tiny:pace=S]`: what tests use for a long job without a long CPU bill; the video is still made."""
    import time

    marks: list[float] = []

    def progress(stage, step, total):
        if stage == "denoising":
            marks.append(time.monotonic())

    frames = np.concatenate(list(tiny_backend.generate(_job(prompt="a fox [tiny:pace=0.3]"), None, progress).frames))
    gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    assert len(gaps) == 3 and all(gap >= 0.3 for gap in gaps), gaps
    assert frames.shape == (9, 128, 128, 3)


def test_dmd_timesteps_by_default(tiny_backend):
    from worker_app_fastwan.pipelines.dmd import DMD_TIMESTEPS, dmd_timesteps

    assert JobInput(prompt="x").num_inference_steps == 3
    assert dmd_timesteps(3) == [1000.0, 757.0, 522.0] == [float(t) for t in DMD_TIMESTEPS]
    tiny_backend.generator.denoise(_job(), None, lambda *_: None)
    assert tiny_backend.generator.scheduler.timesteps.tolist() == [1000.0, 757.0, 522.0]
    assert tiny_backend.generator.scheduler.sigmas.tolist() == pytest.approx([1.0, 0.757, 0.522, 0.0])


def test_progress_reports_every_step_in_order(tiny_backend):
    events = []
    job = _job(num_inference_steps=3)
    list(tiny_backend.generate(job, None, lambda *e: events.append(e)).frames)
    assert events[0] == ("encoding_prompt", None, None)
    assert [e for e in events if e[0] == "denoising"] == [("denoising", i, 3) for i in range(4)]
    assert events[-1] == ("decoding", None, None)


@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_project_loop_matches_plain_pipeline_call(tiny_backend, mode):
    """The project's faster loop (scalar t2v timestep, seeded re-noise) samples what diffusers' pipeline does."""
    import torch

    gen = tiny_backend.generator
    image = gradient_image(256, 256, seed=5) if mode == "i2v" else None
    job = _job(seed=21, image_url="http://example.com/x.png" if image else None)
    ours = gen.denoise(job, image, lambda *_: None)
    plain_pipe = gen.i2v if image else gen.t2v
    g = torch.Generator("cpu").manual_seed(21)
    gen.scheduler.generator = g  # the plain call re-noises through the scheduler's own generator
    try:
        kwargs = dict(image=image) if image else {}
        plain = plain_pipe(
            prompt=job.prompt,
            height=128,
            width=128,
            num_frames=9,
            num_inference_steps=3,
            guidance_scale=1.0,
            generator=g,
            output_type="latent",
            **kwargs,
        ).frames
    finally:
        gen.scheduler.generator = None
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-4)


def test_streamed_decode_equals_whole_decode(tiny_backend):
    import torch

    gen = tiny_backend.generator
    latents = gen.denoise(_job(num_frames=13), None, lambda *_: None)
    chunks = list(gen.decode_stream(latents))
    assert [c.shape[0] for c in chunks] == [1, 4, 4, 4]
    mean, inv_std = gen._latent_stats(latents)
    with torch.inference_mode():
        whole = gen.vae.decode(latents / inv_std + mean, return_dict=False)[0]
    whole_u8 = ((whole[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(np.concatenate(chunks), whole_u8)


def test_diffusers_backend_loads_a_saved_model_folder(tiny_backend, tmp_path):
    """The production loading code on a `save_pretrained` folder gives the same video as the in-memory model."""
    from worker_app_fastwan.pipelines.diffusers_backend import DiffusersBackend
    from worker_app_fastwan.pipelines.tiny import save_tiny_model

    folder = save_tiny_model(tmp_path / "model")
    assert (folder / "transformer" / "config.json").is_file()
    backend = DiffusersBackend(folder, str(folder), offload_profile="none")
    backend.load()
    assert backend.device_info().backend == "diffusers"
    job = _job(seed=99)
    loaded, built = _frames(backend, job).astype(int), _frames(tiny_backend, job).astype(int)
    # Same weights, same path; a few pixels may round the other way (float noise of the loading path).
    assert np.abs(loaded - built).max() <= 1 and (loaded != built).mean() < 1e-3


def test_streamed_text_encoder_gives_the_same_embeddings(tmp_path):
    """`balanced` streams UMT5 block by block through the GPU; the hook must not change what it computes."""
    import torch

    from worker_app_fastwan.pipelines.diffusers_backend import stream_text_encoder
    from worker_app_fastwan.pipelines.tiny import TinyBackend

    backend = TinyBackend()
    backend.load()
    before = backend.generator._encode_prompt("a red fox in snow")
    stream_text_encoder(backend.generator.t2v.text_encoder, torch.device("cpu"))
    assert hasattr(backend.generator.t2v.text_encoder.encoder.block[0], "_diffusers_hook")
    torch.testing.assert_close(backend.generator._encode_prompt("a red fox in snow"), before, rtol=0, atol=0)


def test_the_child_loads_without_the_collector_then_freezes_what_it_loaded(tmp_path):
    """gpu_child.main: the model's objects leave every later collection, and the collector is back on."""
    import gc
    from multiprocessing import Pipe

    from worker_app_fastwan.core.settings import load_settings
    from worker_app_fastwan.gpu_child import main
    from worker_app_fastwan.gpu_child.messages import Ready

    parent, child = Pipe()
    frozen_before = gc.get_freeze_count()
    try:
        backend, _ = main._load_frozen(child, load_settings(None, PIPELINE_BACKEND="tiny", STATE_DIR=tmp_path))
        assert isinstance(parent.recv(), Ready)
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen_before + 10_000, "the loaded model is out of later collections"
        assert backend.generator is not None
    finally:
        gc.unfreeze()  # this test process goes on with other tests
