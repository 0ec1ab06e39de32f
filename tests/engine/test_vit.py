"""The ECS architecture (bench/engine/models/vit.py, convnext_head.py): parameter counts derived by hand from
the reference configuration, shapes, the reference's module names, sin-cos positions on any grid, the head's
sub-pixel layout, initialisation and pretrained MultiViT / timm-MAE checkpoints.

Full-size models are built on the meta device (shapes only); the CPU model is ``vit_t_convnext``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlprune.engine.models.convnext_head import ConvNeXtHead, head_embed_dim
from mtlprune.engine.models.mtl import MTLModel
from mtlprune.engine.models.pretrained import load_backbone_weights
from mtlprune.engine.models.vit import VIT_T8, ViTEncoder, scaled_dim, sincos_2d
from mtlprune.registry import ARCHS

NYU = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
TASKONOMY = {"segment_semantic": 17, "normal": 3, "depth_zbuffer": 1, "keypoints2d": 1, "edge_texture": 1}
VIT_ARCHS = ("vit_b16_convnext", "vit_s16_convnext", "vit_t_convnext")
TINY = {"width": 0.25, "head_width": 0.03125}  # dim 48, E 96 (segmentation) / 48: the CPU setting


def _meta(arch: str, tasks: dict[str, int], **kwargs: float) -> MTLModel:
    with torch.device("meta"):
        return ARCHS.get(arch)(tasks, **kwargs)


def _tiny(seed: int = 0, tasks: dict[str, int] = NYU) -> MTLModel:
    torch.manual_seed(seed)
    return ARCHS.get("vit_t_convnext")(tasks, **TINY)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _prunable(model: MTLModel, component: str) -> int:
    return sum(
        p.numel() for n, p in model.prunable_parameters().items() if model.component_of(n) == component
    )


# ----------------------------------------------------------------------- counts from the reference config
# MultiViT ``multivit_base``: D = 768, 12 blocks, MLP 4·D, qkv bias, patch 16, RGB in, one global token.
# Block: norm1 2D + qkv (D·3D + 3D) + proj (D² + D) + norm2 2D + fc1 (D·4D + 4D) + fc2 (4D·D + D)
#      = 12D² + 13D.  Patch conv: 3·16²·D + D.  Global token: D.
def _vit_counts(dim: int, depth: int, patch: int) -> tuple[int, int, int]:
    """(all backbone parameters, blocks alone, prunable = patch conv + 4 Linear weights per block)."""
    block = 12 * dim * dim + 13 * dim
    total = depth * block + (3 * patch * patch * dim + dim) + dim
    prunable = 3 * patch * patch * dim + depth * 12 * dim * dim
    return total, depth * block, prunable


# ConvNeXtAdapter, depth 2, 16 predictions per patch, c = E/16: proj_dec D·E + E; per block dwconv 7×7
# (49c + c), LayerNorm 2c, pwconv1 (c·4c + 4c), pwconv2 (4c·c + c) = 8c² + 57c; final 1×1 conv c·n + n.
def _head_counts(dim: int, embed: int, n_out: int) -> tuple[int, int]:
    """(all head parameters, prunable = proj_dec, dwconv, pwconv1, pwconv2 and final conv weights)."""
    c = embed // 16
    total = dim * embed + embed + 2 * (8 * c * c + 57 * c) + c * n_out + n_out
    prunable = dim * embed + 2 * (49 * c + 8 * c * c) + c * n_out
    return total, prunable


def test_vit_b16_backbone_counts_match_the_reference():
    model = _meta("vit_b16_convnext", NYU)
    total, blocks, prunable = _vit_counts(768, 12, 16)
    assert (total, blocks, prunable) == (85_645_824, 85_054_464, 85_524_480)
    assert _params(model.backbone) == total
    assert _params(model.backbone.encoder) == blocks
    assert _params(model.backbone.input_adapters) == 590_592  # the notes' 0.59 M patch embedding
    assert _prunable(model, "backbone") == prunable
    # the reference notes' analytic sizes: 85.65 M = 85.05 M in blocks + 0.59 M patch embedding
    assert (f"{total / 1e6:.2f}", f"{blocks / 1e6:.2f}") == ("85.65", "85.05")


@pytest.mark.parametrize(("tasks", "dataset"), [(NYU, "nyu"), (TASKONOMY, "taskonomy")])
def test_vit_b16_head_counts_match_the_reference(tasks, dataset):
    model = _meta("vit_b16_convnext", tasks)
    embed = {"segment_semantic": 3072, "edge_texture": 3072, "normal": 1536, "depth_zbuffer": 1536,
             "keypoints2d": 1536}  # fmt: skip
    for task, n_out in tasks.items():
        total, prunable = _head_counts(768, embed[task], n_out)
        assert _params(model.heads[task]) == total, task
        assert _prunable(model, f"head/{task}") == prunable, task
    if dataset == "nyu":  # one E = 3072 head on NYU-v2's 40 classes: the notes' ≈ 2.98 M
        assert _params(model.heads["segment_semantic"]) == 2_981_800


def test_vit_s16_and_tiny_counts():
    small = _meta("vit_s16_convnext", NYU)
    assert _params(small.backbone) == _vit_counts(384, 12, 16)[0] == 21_589_248
    tiny = _meta("vit_t_convnext", NYU, **TINY)
    assert tiny.backbone.out_channels == 48
    assert _params(tiny.backbone) == _vit_counts(48, 4, 8)[0]
    assert _params(tiny.heads["segment_semantic"]) == _head_counts(48, 96, 40)[0]
    assert _params(tiny.heads["normal"]) == _head_counts(48, 48, 3)[0]


def test_registered_with_one_line_docstrings():
    for name in VIT_ARCHS:
        factory = ARCHS.get(name)
        assert factory.__doc__ and "\n" not in factory.__doc__.strip()


def test_width_scales_dim_to_a_multiple_of_heads_and_four():
    assert scaled_dim(768, 12, 1.0) == 768
    assert scaled_dim(768, 12, 0.1) == 72  # 76.8 → nearest multiple of 12
    assert scaled_dim(384, 6, 0.5) == 192  # multiple of lcm(6, 4) = 12
    assert scaled_dim(384, 6, 0.3) == 120  # 115.2 → 120, not 114 (6 | 114 but 4 ∤ 114)
    assert scaled_dim(192, 2, 0.25) == 48
    assert scaled_dim(192, 2, 0.001) == 4  # at least one step
    model = _meta("vit_s16_convnext", NYU, width=0.5)
    assert model.backbone.encoder[0].attn.qkv.weight.shape == (576, 192)
    assert model.backbone.encoder[0].mlp.fc1.weight.shape == (768, 192)
    assert len(model.backbone.encoder) == 12  # depth does not scale


def test_head_width_scales_embed_to_whole_sub_pixels():
    assert [head_embed_dim(t) for t in ("segment_semantic", "normal", "depth_zbuffer", "edge_texture")] == [
        3072, 1536, 1536, 3072,
    ]  # fmt: skip
    assert head_embed_dim("keypoints2d") == 1536 and head_embed_dim("anything_else") == 3072
    assert head_embed_dim("segment_semantic", 1 / 32) == 96 and head_embed_dim("normal", 1 / 32) == 48
    assert head_embed_dim("normal", 0.3) == 464  # 460.8 → nearest multiple of 16
    assert head_embed_dim("normal", 1e-4) == 16
    model = _meta("vit_b16_convnext", NYU, head_width=0.5)
    assert model.heads["segment_semantic"].proj_dec.weight.shape == (1536, 768)
    assert model.heads["segment_semantic"].blocks[0].dwconv.weight.shape == (96, 1, 7, 7)


# ------------------------------------------------------------------------------------- names, shapes
def test_module_names_are_the_reference_hook_points():
    model = _meta("vit_b16_convnext", NYU)
    modules = dict(model.backbone.named_modules())
    for i in range(12):
        for name, kind in (("norm1", nn.LayerNorm), ("attn.qkv", nn.Linear), ("attn.proj", nn.Linear),
                           ("norm2", nn.LayerNorm), ("mlp.fc1", nn.Linear), ("mlp.act", nn.GELU),
                           ("mlp.fc2", nn.Linear)):  # fmt: skip
            assert isinstance(modules[f"encoder.{i}.{name}"], kind), (i, name)
    assert modules["encoder.0.norm1"].eps == 1e-6 and modules["encoder.0.attn.qkv"].bias is not None
    assert modules["input_adapters.rgb.proj"].kernel_size == (16, 16)
    assert modules["input_adapters.rgb.proj"].stride == (16, 16)
    assert model.backbone.global_tokens.shape == (1, 1, 768)
    head = dict(model.heads["segment_semantic"].named_modules())
    assert {"proj_dec", "blocks.0.dwconv", "blocks.0.norm", "blocks.0.pwconv1", "blocks.0.act",
            "blocks.0.pwconv2", "blocks.1.pwconv2", "final_layer"} <= set(head)  # fmt: skip
    assert head["blocks.0.dwconv"].groups == 192 and head["blocks.0.dwconv"].kernel_size == (7, 7)


def test_prunable_set_is_every_linear_and_conv_weight():
    model = _meta("vit_b16_convnext", NYU)
    prunable = model.prunable_parameters()
    backbone = [n for n in prunable if model.component_of(n) == "backbone"]
    assert backbone[:5] == [
        "backbone.input_adapters.rgb.proj.weight",
        "backbone.encoder.0.attn.qkv.weight",
        "backbone.encoder.0.attn.proj.weight",
        "backbone.encoder.0.mlp.fc1.weight",
        "backbone.encoder.0.mlp.fc2.weight",
    ]
    assert len(backbone) == 1 + 4 * 12
    assert len([n for n in prunable if model.component_of(n) == "head/normal"]) == 1 + 2 * 3 + 1
    modules = dict(model.named_modules())
    linear_or_conv = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert [n.removesuffix(".weight") for n in prunable] == linear_or_conv  # no LayerNorm, token or bias
    assert model.task_path("backbone.encoder.3.mlp.fc1.weight") == tuple(NYU)
    assert model.task_path("heads.normal.blocks.1.pwconv1.weight") == ("normal",)


@pytest.mark.parametrize(("arch", "size", "side"), [
    ("vit_b16_convnext", 416, 26), ("vit_b16_convnext", 512, 32), ("vit_b16_convnext", 321, 20),
    ("vit_s16_convnext", 224, 14), ("vit_t_convnext", 48, 6),
])  # fmt: skip
def test_output_shapes(arch, size, side):
    model = _meta(arch, NYU)
    with torch.device("meta"):
        features = model.backbone(torch.zeros(2, 3, size, size))
        outputs = {t: head(features) for t, head in model.heads.items()}
    dim = model.backbone.out_channels
    assert tuple(features.shape) == (2, dim, side, side)  # patch grid, global token dropped
    assert {t: tuple(o.shape) for t, o in outputs.items()} == {
        t: (2, c, 4 * side, 4 * side) for t, c in NYU.items()
    }  # 4×4 sub-pixels per patch


def test_non_multiple_inputs_are_resized_to_the_nearest_multiple():
    model = _tiny()
    model.eval()
    x = torch.randn(2, 3, 50, 70)  # p = 8: 6.25 → 6 and 8.75 → 9 patches
    with torch.no_grad():
        out = model.backbone(x)
        resized = model.backbone(F.interpolate(x, size=(48, 72), mode="bilinear", align_corners=False))
    assert tuple(out.shape) == (2, 48, 6, 9)
    torch.testing.assert_close(out, resized, rtol=0, atol=0)


def test_tiny_forward_and_backward_of_batch_8_is_well_under_a_second():
    model = _tiny()
    x = torch.randn(8, 3, 48, 48)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            sum(o.mean() for o in model(x).values()).backward()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert best < 0.5


# ---------------------------------------------------------------------------------------- positions
def test_sincos_golden_values():
    # dim 8: ω = 1/10000^(k/2), k = 0, 1 → (1, 0.01); token (r, c) = [sin rω, cos rω, sin cω, cos cω]
    table = sincos_2d(2, 3, 8)
    assert table.shape == (6, 8)
    expected = {
        (0, 0): [0, 0, 1, 1, 0, 0, 1, 1],
        (1, 2): [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01),
                 math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)],
        (0, 1): [0, 0, 1, 1, math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],
    }  # fmt: skip
    for (r, c), values in expected.items():
        torch.testing.assert_close(
            table[r * 3 + c], torch.tensor(values, dtype=torch.float32), rtol=0, atol=1e-7
        )
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_positions_on_any_grid_agree_where_grids_overlap():
    """A training crop's tokens get the positions of the same (row, column) in a full evaluation frame."""
    crop, full = sincos_2d(6, 6, 48), sincos_2d(6, 8, 48)
    for r in range(6):
        for c in range(6):
            assert torch.equal(crop[r * 6 + c], full[r * 8 + c])


def test_encoder_adds_the_table_of_the_input_grid_and_appends_the_global_token():
    backbone = _tiny().backbone
    with torch.no_grad():
        backbone.input_adapters["rgb"].proj.weight.zero_()
        backbone.input_adapters["rgb"].proj.bias.zero_()
    seen: list[torch.Tensor] = []
    backbone.encoder[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    for h, w in ((48, 48), (32, 40)):
        seen.clear()
        backbone(torch.randn(1, 3, h, w))
        tokens = seen[0][0]
        n = (h // 8) * (w // 8)
        assert tokens.shape == (n + 1, 48)
        torch.testing.assert_close(tokens[:n], sincos_2d(h // 8, w // 8, 48), rtol=0, atol=0)
        assert torch.equal(tokens[n], backbone.global_tokens[0, 0].detach())


# --------------------------------------------------------------------------------------------- head
def test_head_reads_each_token_as_4x4_sub_pixels_sub_pixel_outer():
    head = ConvNeXtHead(in_channels=2, out_channels=1, embed_dim=32)  # c = 2 channels per sub-pixel
    with torch.no_grad():
        head.proj_dec.weight.zero_()
        head.proj_dec.bias.copy_(torch.arange(32.0))
    seen: list[torch.Tensor] = []
    head.blocks.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    out = head(torch.zeros(1, 2, 2, 3))  # a 2×3 token grid → 8×12 map
    grid = seen[0]
    assert grid.shape == (1, 2, 8, 12) and out.shape == (1, 1, 8, 12)
    for ph in range(4):
        for pw in range(4):
            for ch in range(2):  # channel (ph·4 + pw)·c + ch of every token lands at (4·nh + ph, 4·nw + pw)
                assert torch.all(grid[0, ch, ph::4, pw::4] == (ph * 4 + pw) * 2 + ch)


def test_head_rejects_an_embed_that_is_not_whole_sub_pixels():
    with pytest.raises(ValueError, match="preds_per_patch"):
        ConvNeXtHead(8, 1, embed_dim=40)


# --------------------------------------------------------------------------------------------- init
def test_initialisation_is_the_references():
    torch.manual_seed(0)
    model = ARCHS.get("vit_t_convnext")(NYU)  # width 1: dim 192
    backbone = model.backbone
    dim = 192
    block = backbone.encoder[0]
    qkv_bound = math.sqrt(6 / (dim + dim))  # Q, K, V each a (dim × dim) xavier matrix
    fc1_bound = math.sqrt(6 / (dim + 4 * dim))
    assert block.attn.qkv.weight.abs().max() <= qkv_bound < 1.01 * block.attn.qkv.weight.abs().max()
    assert block.mlp.fc1.weight.abs().max() <= fc1_bound < 1.01 * block.mlp.fc1.weight.abs().max()
    patch = backbone.input_adapters["rgb"].proj.weight
    patch_bound = math.sqrt(6 / (dim + 3 * 8 * 8))  # xavier on the flattened (dim, 3·p·p) weight
    assert patch.abs().max() <= patch_bound < 1.02 * patch.abs().max()
    for name, p in backbone.named_parameters():
        if name.endswith("bias") and "input_adapters" not in name:
            assert torch.all(p == 0), name
        if ".norm" in name and name.endswith("weight"):
            assert torch.all(p == 1), name
    tokens = backbone.global_tokens
    assert tokens.abs().max() < 0.1 and 0.012 < float(tokens.detach().std()) < 0.028  # N(0, 0.02²), 192 draws
    head = model.heads["segment_semantic"]
    proj_bound = math.sqrt(6 / (dim + 3072))
    assert head.proj_dec.weight.abs().max() <= proj_bound < 1.01 * head.proj_dec.weight.abs().max()
    assert torch.all(head.proj_dec.bias == 0) and torch.all(head.blocks[0].pwconv1.bias == 0)
    assert torch.all(head.blocks[0].norm.weight == 1)


# --------------------------------------------------------------------------------------- pretrained
def _donor() -> ViTEncoder:
    torch.manual_seed(1)
    return ViTEncoder(VIT_T8, width=0.25)


def _same_function(a: ViTEncoder, b: ViTEncoder) -> None:
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_multivit_checkpoint_loads(tmp_path: Path):
    donor = _donor()
    state = dict(donor.state_dict())
    dim = 48
    # MultiMAE stores its fixed table for 224 / 8 = 28 patches as (1, dim, h, w)
    state["input_adapters.rgb.pos_emb"] = sincos_2d(28, 28, dim).T.reshape(1, dim, 28, 28)
    state["output_adapters.semseg.proj_dec.weight"] = torch.zeros(4, dim)
    state["input_adapters.depth.proj.weight"] = torch.zeros(dim, 1, 8, 8)
    path = tmp_path / "multivit.pth"
    torch.save({"model": state}, path)
    target = ViTEncoder(VIT_T8, width=0.25)
    dropped = load_backbone_weights(target, path)
    assert sorted(dropped) == [
        "input_adapters.depth.proj.weight",
        "input_adapters.rgb.pos_emb",
        "output_adapters.semseg.proj_dec.weight",
    ]
    _same_function(donor, target)


def _timm_state(donor: ViTEncoder, cls_position: torch.Tensor) -> dict[str, torch.Tensor]:
    """The donor under timm / MAE names: MAE's column-first table, a cls token that gets a position."""
    dim = donor.out_channels
    ours = sincos_2d(28, 28, dim)
    mae_table = torch.cat([ours[:, dim // 2 :], ours[:, : dim // 2]], dim=1)  # column first
    state: dict[str, torch.Tensor] = {
        "pos_embed": torch.cat([cls_position, mae_table]).unsqueeze(0),
        "cls_token": donor.global_tokens.detach() - cls_position,
        "norm.weight": torch.ones(dim),
        "norm.bias": torch.zeros(dim),
        "head.weight": torch.zeros(1000, dim),
        "decoder_embed.weight": torch.zeros(4, dim),
        "mask_token": torch.zeros(1, 1, 4),
    }
    for key, value in donor.state_dict().items():
        key = key.replace("input_adapters.rgb.proj.", "patch_embed.proj.")
        key = key.replace("encoder.", "blocks.") if key.startswith("encoder.") else key
        if key != "global_tokens":
            state[key] = value
    return state


def test_timm_mae_checkpoint_loads(tmp_path: Path):
    donor = _donor()
    cls_position = torch.full((1, 48), 0.5)  # MAE's is zeros; any value folds into the global token
    path = tmp_path / "timm.pth"
    torch.save(_timm_state(donor, cls_position), path)
    target = ViTEncoder(VIT_T8, width=0.25)
    dropped = load_backbone_weights(target, path)
    assert sorted(dropped) == ["decoder_embed.weight", "head.weight", "mask_token", "norm.bias",
                               "norm.weight", "pos_embed"]  # fmt: skip
    torch.testing.assert_close(target.global_tokens, donor.global_tokens, rtol=0, atol=1e-7)
    with torch.no_grad():
        target.global_tokens.copy_(donor.global_tokens)  # equal up to the float rounding of (a − b) + b
    _same_function(donor, target)


def test_learned_positions_and_other_widths_are_refused(tmp_path: Path):
    donor = _donor()
    state = _timm_state(donor, torch.zeros(1, 48))
    state["pos_embed"] = state["pos_embed"] + 0.01 * torch.randn_like(state["pos_embed"])
    learned = tmp_path / "learned.pth"
    torch.save(state, learned)
    with pytest.raises(ValueError, match=r"learned\.pth.*not a fixed 2-D sin-cos table"):
        load_backbone_weights(ViTEncoder(VIT_T8, width=0.25), learned)
    other = tmp_path / "wide.pth"
    torch.save(ViTEncoder(VIT_T8, width=0.5).state_dict(), other)
    with pytest.raises(ValueError, match=r"shape mismatches: global_tokens \(expected \(1, 1, 48\), found"):
        load_backbone_weights(ViTEncoder(VIT_T8, width=0.25), other)
