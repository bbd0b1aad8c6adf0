"""Few-step DMD sampling as FastWan was distilled: timesteps [1000, 757, 522], no CFG, x0 then re-noise."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchLCMScheduler
from diffusers.schedulers.scheduling_flow_match_lcm import FlowMatchLCMSchedulerOutput

from worker_app_fastwan.core.schema import MAX_STEPS, MIN_STEPS

DMD_TIMESTEPS = (1000, 757, 522)
NUM_TRAIN_TIMESTEPS = 1000


def dmd_timesteps(num_steps: int) -> list[float]:
    """The distilled schedule for 3 steps, its prefix for fewer. Other counts were never distilled: refused."""
    if not MIN_STEPS <= num_steps <= MAX_STEPS:
        raise ValueError(f"num_inference_steps: must be {MIN_STEPS}-{MAX_STEPS} (got {num_steps})")
    return [float(t) for t in DMD_TIMESTEPS[:num_steps]]


def dmd_sigmas(num_steps: int) -> list[float]:
    return [t / NUM_TRAIN_TIMESTEPS for t in dmd_timesteps(num_steps)]


def make_scheduler() -> FlowMatchLCMScheduler:
    """shift 1.0: the DMD timesteps are used as they are, not shifted."""
    return DMDScheduler(shift=1.0, num_train_timesteps=NUM_TRAIN_TIMESTEPS)


class DMDScheduler(FlowMatchLCMScheduler):
    """FlowMatchLCMScheduler on the DMD schedule, with a seeded re-noise draw.

    `WanPipeline.__call__` only passes `num_inference_steps` and calls `step()` without a generator, so the
    schedule is set here and `generator` (set per job) seeds the re-noise; otherwise a seed would not
    reproduce a video through the plain pipeline call.
    """

    generator: torch.Generator | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, **kwargs) -> None:
        if sigmas is None and kwargs.get("timesteps") is None:
            sigmas = dmd_sigmas(num_inference_steps or len(DMD_TIMESTEPS))
        super().set_timesteps(num_inference_steps=None, device=device, sigmas=sigmas, **kwargs)

    def step(self, model_output, timestep, sample, generator=None, return_dict=True) -> Any:
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.sigmas[self.step_index + 1] == 0:
            # The last step returns x0: the parent class would draw a full-size noise tensor (on the CPU
            # generator, then copy it) only to multiply it by σ′ = 0.
            x0 = sample.float() - self.sigmas[self.step_index] * model_output.float()
            self._step_index += 1
            x0 = x0.to(model_output.dtype)
            return FlowMatchLCMSchedulerOutput(prev_sample=x0) if return_dict else (x0,)
        return super().step(
            model_output, timestep, sample, generator=generator or self.generator, return_dict=return_dict
        )
