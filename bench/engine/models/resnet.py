"""Deeplab-ResNet34: the dilated ResNet-34 of AdaShare/AdapMTL (``Deeplab_ResNet34.py``), output stride 8.

Stem 7×7/2 (64) + BN + ReLU + 3×3/2 max-pool (padding 1, ceil mode); BasicBlocks [3,4,6,3] with widths
[64,128,256,512], strides [1,2,1,1], dilations [1,1,2,4] (both 3×3 convs, padding = dilation); a 1×1
downsample + BN where stride, width or dilation changes. `width` scales every channel count.
Initialisation follows the references (conv N(0, 0.01), BN 1/0); the ASPP heads keep PyTorch's default.
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlprune.engine.models.aspp import ASPPHead
from mtlprune.engine.models.mtl import MTLModel, scaled
from mtlprune.registry import ARCHS

LAYERS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 1, 1)
DILATIONS = (1, 1, 2, 4)


class BasicBlock(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, stride: int, dilation: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class DilatedResNet34(nn.Module):
    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        in_ch, prev_dilation = stem, 1
        stages = []
        for n_blocks, w, stride, dilation in zip(LAYERS, WIDTHS, STRIDES, DILATIONS, strict=True):
            out_ch = scaled(w, width)
            downsample = None
            if stride != 1 or in_ch != out_ch or dilation != prev_dilation:
                downsample = nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
                )
            blocks = [BasicBlock(in_ch, out_ch, stride, dilation, downsample)]
            blocks += [BasicBlock(out_ch, out_ch, 1, dilation, None) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch, prev_dilation = out_ch, dilation
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_ch
        self._init_weights()

    def _init_weights(self) -> None:
        """As the AdapMTL and DiSparse references: conv weights N(0, 0.01), BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@ARCHS.register("deeplab_resnet34")
def deeplab_resnet34(task_channels: dict[str, int], width: float = 1.0, head_width: float = 1.0) -> MTLModel:
    """Dilated ResNet-34 (output stride 8) with one ASPP head per task (AdaShare/AdapMTL)."""
    backbone = DilatedResNet34(width)
    heads = {t: ASPPHead(backbone.out_channels, c, head_width) for t, c in task_channels.items()}
    return MTLModel(backbone, heads)
