"""`balanced`'s text encoder: UMT5 (11.4 GB) in host memory, its blocks streamed through the GPU, its token
embedding looked up on the host.

Moving the encoder whole to the GPU for each prompt would need transformer + VAE + text encoder at once
(≈ 23 GiB: too much for 24 GB cards). Block by block (diffusers' group offloading on the encoder stack,
whose `block` list it can see) the GPU holds two 0.39 GB blocks at a time: the one running and the next,
prefetched on a side stream from a pinned (page-locked) host copy of the blocks (≈ 9.3 GB).

The 2.1 GB token embedding is no block. Left to diffusers it falls into the stack's "unmatched" group,
which is copied synchronously, from pageable memory, to the GPU before every prompt and back after: 4.2 GB
over PCIe per job for a lookup of at most 512 rows. Here it stays out of every group, in host memory, and
the lookup runs there: the ids go to the host, and only the looked-up rows (512 × 4096 values, 4 MB in
bf16) come back to the GPU.
"""

from __future__ import annotations

from typing import Any

import torch


def stream_text_encoder(text_encoder: torch.nn.Module, device: torch.device) -> None:
    """Block-wise group offloading on `text_encoder.encoder`, with the token embedding looked up on the host."""
    from diffusers.hooks import apply_group_offloading

    stack = text_encoder.encoder
    embedding = stack.embed_tokens
    cuda = device.type == "cuda"
    # Out of the stack while the hooks are made, so that no offload group takes it in.
    stack.embed_tokens = None
    try:
        apply_group_offloading(
            stack,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=cuda,
            non_blocking=cuda,
        )
    finally:
        stack.embed_tokens = embedding
    look_up_on_host(embedding, device)


def look_up_on_host(embedding: torch.nn.Module, device: torch.device) -> None:
    """`embedding` stays where it is (host memory); its input comes to it and its output goes to `device`."""
    embedding.to("cpu")

    def ids_to_host(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].to(module.weight.device), *args[1:])

    def rows_to_device(_module: torch.nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        return out.to(device)

    embedding.register_forward_pre_hook(ids_to_host)
    embedding.register_forward_hook(rows_to_device)
