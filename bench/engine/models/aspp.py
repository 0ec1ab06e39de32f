"""DeepLab-v2 ASPP task head as used by AdaShare, DiSparse and AdapMTL (reference ``main/head.py``).

Four parallel branches with dilation = padding 6/12/18/24, each 3×3 C→1024 (bias), ReLU, Dropout(0.5),
1×1 1024→1024, ReLU, Dropout(0.5), 1×1 1024→n_out; the branch outputs are summed, not concatenated.
`head_width` scales the 1024 hidden channels; the output stays at backbone resolution.
"""

from __future__ import annotations

from torch import Tensor, nn

from mtlprune.engine.models.mtl import scaled

ASPP_DILATIONS = (6, 12, 18, 24)


class ASPPBranch(nn.Module):
    def __init__(self, in_channels: int, hidden: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=dilation, dilation=dilation, bias=True)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=True)
        self.conv3 = nn.Conv2d(hidden, out_channels, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.relu(self.conv1(x)))
        x = self.dropout(self.relu(self.conv2(x)))
        return self.conv3(x)


class ASPPHead(nn.Module):
    """Sum of four dilated branches."""

    def __init__(self, in_channels: int, out_channels: int, head_width: float = 1.0) -> None:
        super().__init__()
        hidden = scaled(1024, head_width)
        self.branches = nn.ModuleList(
            ASPPBranch(in_channels, hidden, out_channels, d) for d in ASPP_DILATIONS
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out
