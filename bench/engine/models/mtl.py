"""The multi-task model: a shared backbone plus one head per task, with its prunable parameters named.

Components are `backbone` and `head/<task>`; the prunable set is every conv and linear weight (BN and
biases are excluded), the same for every method. A parameter's task path is the set of tasks whose
inference uses it (all tasks for the backbone, one for a head).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


class MTLModel(nn.Module):
    """Shared `backbone` → one head per task; returns head outputs at backbone resolution."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.tasks: tuple[str, ...] = tuple(heads)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.backbone(x)
        return {task: head(features) for task, head in self.heads.items()}

    def components(self) -> dict[str, nn.Module]:
        """`backbone` and `head/<task>` for each task, in head order."""
        return {"backbone": self.backbone, **{f"head/{t}": h for t, h in self.heads.items()}}

    def prunable_parameters(self) -> dict[str, nn.Parameter]:
        """Conv and linear weights by full parameter name (``heads.normal.branches.0.conv1.weight``)."""
        out: dict[str, nn.Parameter] = {}
        for module_name, module in self.named_modules():
            if isinstance(module, PRUNABLE_TYPES):
                out[f"{module_name}.weight"] = module.weight
        return out

    def component_of(self, param_name: str) -> str:
        """The component that owns a parameter, from the module structure (not from name guessing)."""
        if param_name.startswith("backbone."):
            return "backbone"
        if param_name.startswith("heads."):
            task = param_name.split(".", 2)[1]
            if task in self.heads:
                return f"head/{task}"
        raise KeyError(f"parameter {param_name!r} belongs to no component of this model")

    def task_path(self, param_name: str) -> tuple[str, ...]:
        """Tasks whose inference uses the parameter."""
        component = self.component_of(param_name)
        return self.tasks if component == "backbone" else (component.removeprefix("head/"),)


def scaled(channels: int, multiplier: float) -> int:
    """Channel count at a width multiplier, at least 1 (used by every architecture)."""
    return max(1, round(channels * multiplier))


def count_weights(params: dict[str, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())


@torch.no_grad()
def feature_channels(backbone: nn.Module) -> int:
    """Output channels of a backbone, probed in eval mode so BN statistics are not touched."""
    was_training = backbone.training
    backbone.eval()
    out = backbone(torch.zeros(1, 3, 64, 64))
    backbone.train(was_training)
    return int(out.shape[1])
