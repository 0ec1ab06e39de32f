"""ViT encoders with ConvNeXt heads: the architecture of ECS (Shoouri et al., ICCV 2023).

The reference (``sarashoouri/EfficientMTL``) uses MultiMAE's ``MultiViT`` (``multivit_base``) as a ViT-B/16:
dim 768, depth 12, 12 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6, pre-norm blocks, no final norm;
the image is cut into p×p patches by a strided conv, fixed (not learned) 2-D sin-cos positions are added,
and one learned global token is appended after the patch tokens. Every task has a `ConvNeXtHead`
(mtlprune.engine.models.convnext_head). Module names reproduce the reference's state-dict keys and hook
points: ``input_adapters.rgb.proj`` (patch conv), ``global_tokens``, ``encoder.{i}.norm1``,
``.attn.qkv``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``, ``.mlp.act``, ``.mlp.fc2``; the classes are ours.
Attention is written with explicit matmuls, as the reference does, so the FLOP counter sees each ``bmm``.

The backbone returns the patch-token grid as (B, C, H/p, W/p), the global token dropped (the reference's
heads read the patch tokens only), so `MTLModel.forward` is the same as for the CNNs.

Positions: the sin-cos table is computed for the grid of each input (a 48×48 training crop and a 480×640
evaluation frame each get their own), which the fixed embedding allows. The reference builds one table
for its configured image size and resizes it bicubically to other grids; it trains and evaluates at that
one size, where both agree exactly (square grids). Row index in the first half of the channels, column in
the second, as the reference's table on a square grid; on non-square grids (which the reference never
builds) this is the natural generalisation.

Input sizes that are not multiples of the patch size (the benchmark's 321×321 crops at p = 16): the input
is resized bilinearly to the nearest multiple (at least one patch per side) before patchifying. The
reference asserts divisibility instead. Resizing keeps the whole field of view, so the head output still
covers exactly the input and the benchmark's bilinear upsampling to the label size stays aligned (padding
would shift it: heads never see the input size). A divisible input is not touched.

Initialisation as the reference (MultiMAE): Linear weights xavier-uniform with zero bias, ``qkv`` with
Q, K and V each xavier-uniform on its own (dim × dim) block, LayerNorm 1/0, the patch conv xavier-uniform
on its flattened (dim, 3·p·p) weight (bias left at PyTorch's default), the global token truncated normal
with std 0.02 (cut at ±2).

Deviations: no stochastic depth (the reference's base-task script uses drop-path 0.1 in the encoder; the
benchmark's architectures have no training-time randomness besides the ASPP dropout); position tables on
other grids are recomputed, not bicubically resized (above); non-multiple inputs are resized (above).
Without ``arch.pretrained`` the ViT trains from scratch, far from the reference's MAE initialisation: on
795 NYU-v2 images that is a documented deviation of its own (docs/design.md, "Architectures").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlprune.engine.models.convnext_head import ConvNeXtHead, head_embed_dim
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.registry import ARCHS

LAYER_NORM_EPS = 1e-6
GLOBAL_TOKENS = 1
SINCOS_TEMPERATURE = 10000.0


@dataclass(frozen=True)
class ViTConfig:
    """A ViT at width 1: token dim, blocks, heads, patch side and MLP ratio."""

    dim: int
    depth: int
    heads: int
    patch: int
    mlp_ratio: int = 4


# The paper's ViT-B/16, a ViT-S/16 (DeiT-S sizes), and a CPU demo model: ViT-Ti's dim at depth 4 with 2 heads
# and patch 8 (width 0.25 gives dim 48, the ECS acceptance setting), not DeiT-Ti.
VIT_B16 = ViTConfig(dim=768, depth=12, heads=12, patch=16)
VIT_S16 = ViTConfig(dim=384, depth=12, heads=6, patch=16)
VIT_T8 = ViTConfig(dim=192, depth=4, heads=2, patch=8)


def scaled_dim(dim: int, heads: int, width: float) -> int:
    """Token dim at a width multiplier: nearest multiple of lcm(heads, 4), at least one.

    Divisible by the head count (equal heads) and by 4 (the 2-D sin-cos table has four equal parts).
    """
    step = math.lcm(heads, 4)
    return step * max(1, round(dim * width / step))


def sincos_2d(
    grid_h: int,
    grid_w: int,
    dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Fixed 2-D sin-cos positions of a grid_h × grid_w token grid, (grid_h·grid_w, dim), row-major.

    Token (r, c) gets [sin(r·ω), cos(r·ω), sin(c·ω), cos(c·ω)] with ω_k = 1 / 10000^(k / (dim/4)),
    k < dim/4: the reference's (MoCo-v3) table on a square grid, computed for any grid.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos table needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / SINCOS_TEMPERATURE ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    rows = torch.arange(grid_h, device=device, dtype=torch.float32).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device, dtype=torch.float32).repeat(grid_h)
    out_r, out_c = torch.outer(rows, omega), torch.outer(cols, omega)
    table = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    return table.to(dtype)


class PatchEmbedding(nn.Module):
    """p×p patches → tokens by a strided conv (the reference's ``PatchedInputAdapter``, RGB only)."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of an input: the nearest whole number of patches per side, at least one."""
        return max(1, round(height / self.patch)), max(1, round(width / self.patch))

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        grid_h, grid_w = self.grid(*x.shape[-2:])
        size = (grid_h * self.patch, grid_w * self.patch)
        if tuple(x.shape[-2:]) != size:  # not a multiple of the patch: resize (module docstring)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, grid_h·grid_w, dim), row-major
        return tokens, (grid_h, grid_w)


class Attention(nn.Module):
    """Multi-head self-attention with explicit matmuls (softmax(q kᵀ / √d) v), as the reference."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.attn_drop = nn.Identity()  # rate 0 in the reference; kept so its hook points exist
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """fc1 → GELU → fc2 (hook points ``mlp.fc1``, ``mlp.act``, ``mlp.fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Patch embedding + sin-cos positions + one global token + blocks → the patch grid (B, C, h, w)."""

    def __init__(self, config: ViTConfig, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        dim = scaled_dim(config.dim, config.heads, width)
        self.config = config
        self.out_channels = dim
        self.patch = config.patch
        self.input_adapters = nn.ModuleDict({"rgb": PatchEmbedding(in_channels, dim, config.patch)})
        self.global_tokens = nn.Parameter(torch.zeros(1, GLOBAL_TOKENS, dim))
        self.encoder = nn.Sequential(
            *(Block(dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """MultiMAE's initialisation (module docstring)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.endswith("attn.qkv"):  # Q, K and V as three (dim × dim) matrices
                    bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        proj = self.input_adapters["rgb"].proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))  # like a Linear, as MAE does
        nn.init.trunc_normal_(self.global_tokens, std=0.02, a=-2.0, b=2.0)

    def convert_pretrained(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """A MultiViT or timm/MAE checkpoint under this module's key names, and the keys dropped.

        Used by `mtlprune.engine.models.pretrained.load_backbone_weights` (module docstring there).
        """
        if TIMM_MARKERS & {k.split(".", 1)[0] for k in state}:
            return _from_timm(state)
        return _from_multivit(state)

    def positions(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        """The (1, grid_h·grid_w, dim) sin-cos table on `like`'s device and dtype."""
        table = sincos_2d(grid_h, grid_w, self.out_channels, device=like.device, dtype=like.dtype)
        return table.unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        tokens, (grid_h, grid_w) = self.input_adapters["rgb"](x)
        tokens = tokens + self.positions(grid_h, grid_w, tokens)
        n = tokens.shape[1]
        tokens = torch.cat([tokens, self.global_tokens.expand(tokens.shape[0], -1, -1)], dim=1)
        tokens = self.encoder(tokens)
        patches = tokens[:, :n]  # the global token is dropped, as the reference's heads do
        return patches.transpose(1, 2).reshape(x.shape[0], self.out_channels, grid_h, grid_w)


# ------------------------------------------------------------------------------------------ pretrained
# Two checkpoint formats load (a local file only, `arch.pretrained`; nothing is downloaded):
# - MultiMAE's MultiViT format, as the reference's ``mae-b_dec512d8b_1600e_multivit-c477195b.pth``: our key
#   names already; ``input_adapters.rgb.pos_emb`` (its fixed table, (1, dim, h, w)) is checked and dropped,
#   ``output_adapters.*`` (heads, decoders) and other modalities' ``input_adapters.*`` are dropped.
# - timm / MAE (``vit_base_patch16_224.mae``, MAE's ``mae_pretrain_vit_base.pth``): ``patch_embed.proj`` →
#   ``input_adapters.rgb.proj``, ``blocks.{i}`` → ``encoder.{i}``, ``cls_token`` + its position
#   (``pos_embed[:, 0]``, zeros in MAE) → ``global_tokens`` (MultiViT adds no position to its global token),
#   the patch rows of ``pos_embed`` checked and dropped; the final ``norm``, ``fc_norm``, ``head`` and the MAE
#   decoder (``decoder_*``, ``mask_token``) are dropped: MultiViT has no final norm.
# A position table is dropped only if it is a fixed 2-D sin-cos table (either orientation: MAE puts the
# column first); learned positions would be lost, so they are an error. The encoder always adds the
# reference's table (row first), also to MAE weights pretrained with MAE's column-first one, as the
# reference runs its MAE weights.
TIMM_MARKERS = frozenset({"patch_embed", "blocks", "cls_token", "pos_embed"})
TIMM_DROPPED = ("norm.", "fc_norm.", "head.", "decoder", "mask_token")
POSITION_ATOL = 1e-4


def _check_sincos(table: Tensor, key: str) -> None:
    """`table` (h, w, dim) is a fixed 2-D sin-cos table, row- or column-first; else ValueError."""
    grid_h, grid_w, dim = table.shape
    if dim % 4 == 0:
        ours = sincos_2d(grid_h, grid_w, dim).view(grid_h, grid_w, dim)
        column_first = torch.cat([ours[..., dim // 2 :], ours[..., : dim // 2]], dim=-1)
        table = table.float()
        if any(torch.allclose(table, t, atol=POSITION_ATOL) for t in (ours, column_first)):
            return
    raise ValueError(
        f"{key} {tuple(table.shape)} is not a fixed 2-D sin-cos table (learned positions?); this ViT uses "
        "fixed sin-cos positions computed for each input and cannot keep other ones"
    )


def _from_multivit(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key == "input_adapters.rgb.pos_emb":
            _check_sincos(value[0].permute(1, 2, 0), key)
            dropped.append(key)
        elif key.startswith("output_adapters.") or (
            key.startswith("input_adapters.") and not key.startswith("input_adapters.rgb.")
        ):
            dropped.append(key)
        else:
            out[key] = value
    return out, dropped


def _from_timm(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    pos = state.get("pos_embed")
    for key, value in state.items():
        if key == "pos_embed":
            side = math.isqrt(value.shape[1] - 1)
            if value.dim() != 3 or side * side != value.shape[1] - 1:
                raise ValueError(f"pos_embed {tuple(value.shape)}: expected (1, 1 + n², dim)")
            _check_sincos(value[0, 1:].reshape(side, side, -1), key)
            dropped.append(key)
        elif key == "cls_token":
            out["global_tokens"] = value if pos is None else value + pos[:, :1]
        elif key.startswith("patch_embed.proj."):
            out["input_adapters.rgb.proj." + key.removeprefix("patch_embed.proj.")] = value
        elif key.startswith("blocks."):
            out["encoder." + key.removeprefix("blocks.")] = value
        elif key.startswith(TIMM_DROPPED):
            dropped.append(key)
        else:
            out[key] = value  # reported as unexpected by the strict load
    return out, dropped


def vit_convnext(
    config: ViTConfig, task_channels: dict[str, int], width: float, head_width: float
) -> MTLModel:
    """A `ViTEncoder` with one `ConvNeXtHead` per task, E per task from `head_embed_dim`."""
    backbone = ViTEncoder(config, width)
    heads = {
        t: ConvNeXtHead(backbone.out_channels, c, head_embed_dim(t, head_width))
        for t, c in task_channels.items()
    }
    return MTLModel(backbone, heads)


@ARCHS.register("vit_b16_convnext")
def vit_b16_convnext(task_channels: dict[str, int], width: float = 1.0, head_width: float = 1.0) -> MTLModel:
    """ViT-B/16 (dim 768, 12 blocks, 12 heads) with one ConvNeXt head per task (ECS, MultiMAE)."""
    return vit_convnext(VIT_B16, task_channels, width, head_width)


@ARCHS.register("vit_s16_convnext")
def vit_s16_convnext(task_channels: dict[str, int], width: float = 1.0, head_width: float = 1.0) -> MTLModel:
    """ViT-S/16 (dim 384, 12 blocks, 6 heads) with one ConvNeXt head per task (the ECS topology)."""
    return vit_convnext(VIT_S16, task_channels, width, head_width)


@ARCHS.register("vit_t_convnext")
def vit_t_convnext(task_channels: dict[str, int], width: float = 1.0, head_width: float = 1.0) -> MTLModel:
    """CPU demo ViT (dim 192, 4 blocks, 2 heads, patch 8) with one ConvNeXt head per task."""
    return vit_convnext(VIT_T8, task_channels, width, head_width)
