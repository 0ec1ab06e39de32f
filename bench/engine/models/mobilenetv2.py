"""MobileNetV2: the light backbone of AdapMTL (``models/mobilenetv2.py``), output stride 32, ASPP heads.

Standard width-1.0 inverted-residual table; first conv 3×3/2 (32) + BN + ReLU6; final 1×1 to 1280 + BN +
ReLU6; no classifier, no pooling, no dilation, so a 321×321 input gives 1280×11×11 (224 → 7×7).
Module names reproduce the state-dict keys of torchvision's ``mobilenet_v2().features`` so that a user's
torchvision checkpoint loads (see `mtlprune.engine.models.pretrained`); the classes are our own.
Initialisation follows the reference: conv He-normal with std sqrt(2/(k·k·C_out)),
BN 1/0; the ASPP heads keep PyTorch's default.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from mtlprune.engine.models.aspp import ASPPHead
from mtlprune.engine.models.mtl import MTLModel, scaled
from mtlprune.registry import ARCHS

STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """conv (no bias) → BN → ReLU6; a Sequential so its keys are ``<i>.0.weight``, ``<i>.1.*``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """[1×1 expand] → 3×3 depthwise → linear 1×1 projection + BN, plus the input when `residual`.

    `residual` is decided by the caller from the width-1.0 table, not from the scaled channel counts, so
    that a narrow model never gains a skip connection the full-width one lacks.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int, residual: bool) -> None:
        super().__init__()
        if residual and (stride != 1 or in_ch != out_ch):
            raise ValueError(f"a residual block needs stride 1 and in == out channels, got {in_ch}→{out_ch}")
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2Backbone(nn.Module):
    """`features` only (indices 0–18 as torchvision); `width` scales every channel count."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        in_ch, in_base = scaled(STEM_CHANNELS, width), STEM_CHANNELS
        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, kernel=3, stride=2)]
        for expansion, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_ch = scaled(c, width)
            for i in range(n):
                stride = s if i == 0 else 1
                residual = stride == 1 and in_base == c
                layers.append(InvertedResidual(in_ch, out_ch, stride, expansion, residual))
                in_ch, in_base = out_ch, c
        self.out_channels = scaled(LAST_CHANNELS, width)
        layers.append(ConvBNReLU6(in_ch, self.out_channels, kernel=1))
        self.features = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the AdapMTL reference: conv N(0, sqrt(2/(k·k·C_out))) (depthwise too), BN weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


@ARCHS.register("mobilenetv2")
def mobilenetv2(task_channels: dict[str, int], width: float = 1.0, head_width: float = 1.0) -> MTLModel:
    """MobileNetV2 (output stride 32, 1280 channels) with one ASPP head per task (AdapMTL)."""
    backbone = MobileNetV2Backbone(width)
    heads = {t: ASPPHead(backbone.out_channels, c, head_width) for t, c in task_channels.items()}
    return MTLModel(backbone, heads)
