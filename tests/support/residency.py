"""Where each model component would be on a GPU, observed on the CPU: what the offload tests assert."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Residency:
    """Where each component was last sent. The offload hooks onload to the execution device ("cpu:0"
    here, a distinct torch.device) and offload to "cpu", so the last `.to()` target says which side
    a GPU would have the component on."""

    def __init__(self, components: dict[str, torch.nn.Module]) -> None:
        self.where = {name: "cpu" for name in components}
        self.seen: list[tuple[str, frozenset[str]]] = []
        for name, module in components.items():
            self._track(name, module)

    def _track(self, name: str, module: torch.nn.Module) -> None:
        import torch

        original = module.to

        def to(*args, **kwargs):
            target = args[0] if args else kwargs.get("device")
            if isinstance(target, (str, torch.device)):
                self.where[name] = str(torch.device(target))
            return original(*args, **kwargs)

        module.to = to  # type: ignore[method-assign]

    def on_gpu(self) -> frozenset[str]:
        return frozenset(name for name, device in self.where.items() if device != "cpu")

    def record_when_running(self, phase: str, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda *_: self.seen.append((phase, self.on_gpu())))
