"""The ConvNeXt dense head of ECS (reference: MultiMAE's ``ConvNeXtAdapter`` with its ``ConvNeXtBlock``).

From a (B, C, h, w) token grid: ``proj_dec`` (Linear C → E) per token; each token's E channels are read as
4×4 sub-pixels of E/16 channels (16 predictions per patch, sub-pixel index outer, channel inner, as the
reference's rearrange), giving a (B, E/16, 4h, 4w) map; ``depth`` = 2 ConvNeXt blocks (7×7 depthwise conv,
LayerNorm eps 1e-6 over channels, Linear E/16 → 4·E/16, GELU, Linear back, residual add; no layer scale and
no drop-path, as the reference's defaults); ``final_layer`` 1×1 conv to the task's channels. The reference
then resizes bilinearly to the input size; here the benchmark's own bilinear upsampling to the label size
(`mtlprune.engine.tasks.upsample_to`, the same op at the same size) does it, so the head returns the
4h × 4w map like the CNN heads return theirs at backbone resolution.

E per task (`head_embed_dim`): the reference uses E = 3072 for semantic segmentation, saliency and edges
and E = 1536 for human parts and surface normals (its PASCAL scripts' defaults). Here: segmentation 3072,
normals 1536, edges (Taskonomy ``edge_texture``) 3072; the reference has no depth or keypoint head, and
depth and keypoints take 1536, like normals, the other dense regression; any other task 3072 (the
reference's default). `head_width` scales E, rounded to a multiple of 16 (whole sub-pixels), at least 16.

Initialisation as the reference's model as a whole (MultiMAE re-initialises its output adapters): Linear
weights xavier-uniform with zero bias, LayerNorm 1/0; the two convs keep PyTorch's default.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

PREDS_PER_PATCH = 16
HEAD_DEPTH = 2
DEFAULT_EMBED = 3072
REFERENCE_EMBED: dict[str, int] = {
    "segment_semantic": 3072,
    "edge_texture": 3072,
    "normal": 1536,
    "depth_zbuffer": 1536,
    "keypoints2d": 1536,
}
LAYER_NORM_EPS = 1e-6


def head_embed_dim(task: str, head_width: float = 1.0) -> int:
    """E of a task's head at `head_width`: the reference's E (module docstring) scaled, a multiple of 16."""
    base = REFERENCE_EMBED.get(task, DEFAULT_EMBED)
    return PREDS_PER_PATCH * max(1, round(base * head_width / PREDS_PER_PATCH))


class ConvNeXtBlock(nn.Module):
    """7×7 depthwise conv → LayerNorm → Linear ×4 → GELU → Linear, plus the input (channels-last MLP)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtHead(nn.Module):
    """Token grid (B, C, h, w) → (B, out, r·h, r·w), r = √preds_per_patch (4)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int = DEFAULT_EMBED,
        preds_per_patch: int = PREDS_PER_PATCH,
        depth: int = HEAD_DEPTH,
    ) -> None:
        super().__init__()
        side = math.isqrt(preds_per_patch)
        if side * side != preds_per_patch or embed_dim % preds_per_patch:
            raise ValueError(
                f"preds_per_patch must be a square dividing embed_dim, got {preds_per_patch} and {embed_dim}"
            )
        self.side = side
        self.class_dim = embed_dim // preds_per_patch
        self.proj_dec = nn.Linear(in_channels, embed_dim)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(self.class_dim) for _ in range(depth)))
        self.final_layer = nn.Conv2d(self.class_dim, out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        r, c = self.side, self.class_dim
        x = self.proj_dec(x.permute(0, 2, 3, 1))  # (B, h, w, E), E = (r·r sub-pixels) × c channels
        x = x.reshape(b, h, w, r, r, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * r, w * r)
        return self.final_layer(self.blocks(x))
