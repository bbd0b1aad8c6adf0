"""model/offload.py and model/memory_budget.py: the profile `auto` picks per card, explicit profiles, the job check."""

from __future__ import annotations

import re

import pytest
from support import REPO

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.model.memory_budget import OffloadPlan, estimate, host_ram_gib, plan_for, tokens_for
from worker_app_fastwan.model.offload import DEFAULT_JOB, check_job_fits, choose_profile, describe, max_frames

DEPLOY_DOC = REPO / "docs" / "deploy.md"


@pytest.mark.parametrize(
    ("vram_gb", "profile"),
    [
        (10, "low_vram"),
        (16, "low_vram"),
        (24, "balanced"),
        (48, "none"),
        (80, "none"),
        # what torch reports for some real cards (less than the nominal size)
        (15.7, "low_vram"),
        (22.0, "balanced"),
        (23.6, "balanced"),
        (79.1, "none"),
        (139.8, "none"),
    ],
)
def test_auto_profile_by_card_size(vram_gb, profile):
    assert choose_profile("auto", vram_gb) == profile


def test_auto_without_cuda_is_none():
    assert choose_profile("auto", None) == "none"


def test_auto_takes_the_fastest_profile_that_runs_the_default_job():
    # A 40 GB A100 cannot hold the streamed float32 VAE decode next to all weights, but can in bfloat16.
    assert choose_profile("auto", 39.4, vae_dtype="float32") == "balanced"
    assert choose_profile("auto", 39.4) == "none"  # bfloat16 decoding is the default
    for vram in (12, 16, 20, 24, 32, 40, 48, 80):
        chosen = choose_profile("auto", vram)
        faster = ("none", "balanced", "low_vram")[: ("none", "balanced", "low_vram").index(chosen)]
        for profile in faster:
            with pytest.raises(JobFailure):
                check_job_fits(*DEFAULT_JOB, vram, profile)


@pytest.mark.parametrize("profile", ["none", "balanced", "low_vram"])
@pytest.mark.parametrize("vram_gb", [None, 10, 24, 80])
def test_explicit_profile_overrides_auto(profile, vram_gb):
    assert choose_profile(profile, vram_gb) == profile


def test_unknown_profile_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="OFFLOAD_PROFILE"):
        choose_profile("turbo", 24)
    with pytest.raises(ValueError, match="OFFLOAD_PROFILE"):
        plan_for("auto")


def test_plans():
    assert plan_for("none") == OffloadPlan(
        model_cpu_offload=False, text_encoder_off_gpu_after_encode=False, vae_tiling=False
    )
    assert plan_for("balanced") == OffloadPlan(
        model_cpu_offload=False, text_encoder_off_gpu_after_encode=True, vae_tiling=True
    )
    assert plan_for("low_vram").model_cpu_offload and plan_for("low_vram").vae_tiling
    with pytest.raises(AttributeError):
        plan_for("none").vae_tiling = True  # frozen: a plan is shared, never edited


def test_tokens():
    assert tokens_for(1280, 704, 121) == 31 * 22 * 40 == 27_280  # the facts file's count
    assert tokens_for(256, 256, 5) == 2 * 8 * 8


@pytest.mark.parametrize(("vram_gb", "profile"), [(80, "none"), (48, "none"), (24, "balanced"), (79.1, "none")])
def test_default_job_fits_the_documented_cards(vram_gb, profile):
    check_job_fits(1280, 704, 121, vram_gb, profile)  # no exception
    check_job_fits(704, 1280, 121, vram_gb, profile)  # portrait: same pixels


def test_large_job_fits_80gb_but_not_24gb():
    check_job_fits(1280, 1280, 241, 80, "none")
    with pytest.raises(JobFailure) as info:
        check_job_fits(1280, 1280, 241, 24, "balanced")
    failure = info.value
    assert failure.code is ErrorCode.invalid_input and failure.retryable is False
    for field in ("width", "height", "num_frames", "1280×1280×241", "24 GB", "balanced"):
        assert field in failure.message
    best = int(re.search(r"num_frames ≤ (\d+)", failure.message).group(1))
    assert best == max_frames(1280, 1280, 24, "balanced")
    assert 5 <= best < 241 and (best - 1) % 4 == 0
    check_job_fits(1280, 1280, best, 24, "balanced")  # the limit it names is accepted
    with pytest.raises(JobFailure):
        check_job_fits(1280, 1280, best + 4, 24, "balanced")


def test_large_job_refused_on_10gb_card():
    # Under model CPU offload the 10 GB transformer alone does not fit a 10 GB card, so nothing does: the
    # worker is set up wrong, not the job, which may succeed on a larger card.
    with pytest.raises(JobFailure) as info:
        check_job_fits(1280, 1280, 241, 10, "low_vram")
    assert info.value.code is ErrorCode.out_of_memory and info.value.retryable is True
    assert "10 GB GPU" in info.value.message


def test_16gb_card_limits_frames_not_only_size():
    with pytest.raises(JobFailure) as info:
        check_job_fits(1280, 704, 121, 16, "low_vram")
    assert info.value.code is ErrorCode.invalid_input
    assert "lower num_frames" in info.value.message
    check_job_fits(1280, 704, 81, 16, "low_vram")
    check_job_fits(832, 480, 121, 16, "low_vram")


def test_size_that_fits_no_frame_count_says_so():
    # 1280×1280 streamed in float32 needs more than a 48 GB card holds next to all weights, whatever the length.
    with pytest.raises(JobFailure) as info:
        check_job_fits(1280, 1280, 5, 48, "none", vae_dtype="float32")
    assert info.value.code is ErrorCode.invalid_input
    assert "lower the size" in info.value.message and "width" in info.value.message
    check_job_fits(1280, 1280, 5, 48, "none", vae_dtype="bfloat16")


def test_no_cuda_no_check():
    check_job_fits(1280, 1280, 241, None, "none")


def test_auto_profile_is_resolved_by_the_check():
    check_job_fits(1280, 704, 121, 24, "auto")
    with pytest.raises(JobFailure):
        check_job_fits(1280, 1280, 241, 24, "auto")


def test_estimate_phases_follow_the_plan():
    none, balanced, low = (estimate(1280, 704, 121, p) for p in ("none", "balanced", "low_vram"))
    # The same activations, less resident weights as more moves off the GPU.
    assert none.denoise_gib > balanced.denoise_gib > low.denoise_gib
    # low_vram holds only the transformer while denoising; balanced also the VAE: float32 encoder side
    # (149.6 M params) and bfloat16 decoder side (555.1 M params) by default.
    vae_bytes = 149.6e6 * 4 + 555.1e6 * 2
    assert balanced.denoise_gib - low.denoise_gib == pytest.approx(vae_bytes / 2**30, rel=0.01)
    # Streamed decode grows with the frame area only; tiled decode with the frame count too.
    assert estimate(1280, 704, 241, "none").decode_gib == pytest.approx(none.decode_gib)
    assert estimate(1280, 704, 241, "balanced").decode_gib > balanced.decode_gib
    assert estimate(1280, 704, 121, "none", vae_dtype="float32").decode_gib > none.decode_gib


def test_low_vram_counts_one_component_per_phase():
    """The generator sends every component back to the CPU at each phase boundary (tested in
    test_gpu_placement.py), so each phase holds exactly its own component's weights."""
    low = estimate(1280, 704, 121, "low_vram")
    act = 224 * 2**10 * tokens_for(1280, 704, 121)
    assert low.denoise_gib == pytest.approx((10.0e9 + act) / 2**30)
    assert low.encode_gib == pytest.approx((11.4e9 + 0.25 * 2**30) / 2**30)
    assert low.decode_gib < estimate(1280, 704, 121, "balanced").decode_gib - 10.0e9 / 2**30 + 0.01


def test_balanced_counts_the_streamed_text_encoder_not_the_whole():
    """UMT5 is streamed block by block: two 0.39 GB blocks, not 11.4 GB; its 2.1 GB embedding is looked up in
    host memory (pipelines/text_encoder_offload.py)."""
    balanced = estimate(1280, 704, 121, "balanced")
    resident = 10.0e9 + 149.6e6 * 4 + 555.1e6 * 2
    assert balanced.encode_gib == pytest.approx((resident + 2 * 0.386e9 + 0.25 * 2**30) / 2**30)
    # so a 24 GB card encodes prompts under `balanced` without a warning (it warned while the whole
    # text encoder was counted)
    assert "WARNING" not in describe("balanced", 22.0)


def test_vae_decoder_dtype_changes_only_the_decoder_side():
    fp32, bf16 = (estimate(1280, 704, 121, "none", vae_dtype=d) for d in ("float32", "bfloat16"))
    assert fp32.denoise_gib - bf16.denoise_gib == pytest.approx(555.1e6 * 2 / 2**30)  # weights only
    streamed_fp32 = 24_000 * 1280 * 704
    assert fp32.decode_gib - bf16.decode_gib == pytest.approx((555.1e6 * 2 + streamed_fp32 / 2) / 2**30)


def test_host_ram_model():
    at_load = 11.4e9 + 10.0e9 + 149.6e6 * 4 + 555.1e6 * 2
    runtime = 4 * 2**30
    for profile in ("none", "balanced", "low_vram"):
        # every component is read into CPU memory before it is placed
        assert host_ram_gib(profile) == pytest.approx((at_load + runtime) / 2**30)
    # FastVideo keeps its float32 text encoder (22.8 GB) on the host
    assert host_ram_gib("fastvideo") > host_ram_gib("balanced") + 10
    assert "host RAM needed ≈ 26 GiB" in describe("balanced", 23.6)


def test_fastvideo_has_its_own_budget():
    """FastVideo's float32 UMT5 (22.8 GB) visits the GPU to encode: a 24 GB card is warned about at
    start-up, and the resident float32 VAE is counted for every job."""
    fv = estimate(1280, 704, 121, "fastvideo")
    assert fv.encode_gib == pytest.approx((10.0e9 + 704.7e6 * 4 + 22.8e9 + 0.25 * 2**30) / 2**30, rel=1e-3)
    assert fv.denoise_gib > estimate(1280, 704, 121, "balanced").denoise_gib
    assert "WARNING" in describe("fastvideo", 23.6) and "prompt encoding" in describe("fastvideo", 23.6)
    assert "WARNING" not in describe("fastvideo", 79.1)
    check_job_fits(1280, 704, 121, 79.1, "fastvideo")
    with pytest.raises(ValueError):
        choose_profile("fastvideo", 80)  # the backend's placement, not something to request


def test_describe_mentions_profile_and_limits():
    line = describe("balanced", 23.6)
    assert line.startswith("balanced on a 23.6 GiB GPU") and "num_frames ≤" in line
    assert "VAE decoder bfloat16" in line
    # `none` counts the whole text encoder next to everything: a card too small for that is warned about
    assert "WARNING" in describe("none", 20.0) and "prompt encoding" in describe("none", 20.0)
    assert "WARNING" not in describe("none", 79.1)
    assert "no CUDA" in describe("none", None)


def _doc_table() -> list[list[str]]:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    block = text.split("<!-- offload-table:start -->")[1].split("<!-- offload-table:end -->")[0]
    rows = [line.strip().strip("|").split("|") for line in block.strip().splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row] for row in rows[2:]]  # skip header and separator


def test_deploy_doc_table_matches_the_code():
    rows = _doc_table()
    assert len(rows) >= 8
    nominal_seen = set()
    for card, nominal, reported, auto_bf16, auto_fp32, frames in rows:
        vram = float(reported)
        assert choose_profile("auto", vram) == auto_bf16, card
        assert choose_profile("auto", vram, vae_dtype="float32") == auto_fp32, card
        best = max_frames(1280, 704, vram, auto_bf16)
        assert frames == ("none fit" if best is None else str(best)), card
        nominal_seen.add(int(nominal))
    assert {10, 16, 24, 48, 80} <= nominal_seen
