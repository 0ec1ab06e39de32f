"""Importing AdapMTL, DiSparse and AdaShare checkpoints (``mtlprune import-checkpoint``).

Their state-dict layouts are written down here from their module definitions (structure only, none of their
code): AdapMTL ``models/Deeplab_ResNet34.py`` (``Deeplab_ResNet_Backbone``: conv1, bn1,
``blocks[stage][block]``, ``ds[stage]``), ``models/mobilenetv2.py`` (``features`` of flat ``conv``
Sequentials, then ``conv``), ``main/head.py`` (``ASPPHeadNode``: fc1..fc4 of conv1..conv3; one
``sparseThreshold`` per component, registered again in every STRConv) and ``main/auto_models.py``
(``MTSeqModel``: ``backbone``, ``heads[task]``); DiSparse ``scene_net.py`` and AdaShare
``models/deeplab_resnet.py`` (the same backbone; heads ``task<i>_fc1_c<k>``; AdaShare's ``task<i>_logits``).

The "small configuration" scales every channel count as our ``width``/``head_width`` do (their code builds
width 1.0 only): names and nesting are theirs, shapes are small. Each table row is (their key, our key,
shape); random tensors under their keys are imported and every one must land on its parameter.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlprune.engine.imports import (
    CAFFE_MEAN_BGR,
    INPUT_MEAN,
    INPUT_STD,
    CheckpointImportError,
    convert_state_dict,
    read_checkpoint,
    state_dict_of,
)
from mtlprune.registry import ARCHS, DATASETS

WIDTH, HEAD_WIDTH = 1 / 16, 1 / 64  # ResNet 64..512 → 4..32 channels, ASPP 1024 → 16
MBV2_WIDTH = 1 / 8
NYU_TASKS = ("segment_semantic", "normal", "depth_zbuffer")
TASKONOMY_TASKS = ("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
Row = tuple[str, str, tuple[int, ...]]


def _c(n: int, width: float) -> int:
    return max(1, round(n * width))


def _bn(theirs: str, ours: str, n: int) -> list[Row]:
    rows: list[Row] = [(f"{theirs}.{p}", f"{ours}.{p}", (n,)) for p in ("weight", "bias")]
    rows += [(f"{theirs}.{p}", f"{ours}.{p}", (n,)) for p in ("running_mean", "running_var")]
    return [*rows, (f"{theirs}.num_batches_tracked", f"{ours}.num_batches_tracked", ())]


def resnet_rows(width: float = WIDTH) -> list[Row]:
    """Deeplab_ResNet_Backbone (AdapMTL, DiSparse and AdaShare alike): conv1 7×7, bn1, then per stage s
    ``blocks.s.b.{conv1,bn1,conv2,bn2}`` and, where stride ≠ 1, channels change or dilation is 2 or 4,
    ``ds.s.{0 (1×1 conv), 1 (BN)}``."""
    rows: list[Row] = [("backbone.conv1.weight", "backbone.conv1.weight", (_c(64, width), 3, 7, 7))]
    rows += _bn("backbone.bn1", "backbone.bn1", _c(64, width))
    inplanes = 64
    for s, (n, planes, stride, dilation) in enumerate(
        zip((3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 1, 1), (1, 1, 2, 4), strict=True)
    ):
        p, cin = _c(planes, width), _c(inplanes, width)
        for b in range(n):
            theirs, ours = f"backbone.blocks.{s}.{b}", f"backbone.layer{s + 1}.{b}"
            rows.append((f"{theirs}.conv1.weight", f"{ours}.conv1.weight", (p, cin if b == 0 else p, 3, 3)))
            rows += _bn(f"{theirs}.bn1", f"{ours}.bn1", p)
            rows.append((f"{theirs}.conv2.weight", f"{ours}.conv2.weight", (p, p, 3, 3)))
            rows += _bn(f"{theirs}.bn2", f"{ours}.bn2", p)
        if stride != 1 or inplanes != planes or dilation in (2, 4):
            ours = f"backbone.layer{s + 1}.0.downsample"
            rows.append((f"backbone.ds.{s}.0.weight", f"{ours}.0.weight", (p, cin, 1, 1)))
            rows += _bn(f"backbone.ds.{s}.1", f"{ours}.1", p)
        inplanes = planes
    return rows


MBV2_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_rows(width: float = MBV2_WIDTH) -> list[Row]:
    """AdapMTL's MobileNetV2: ``features.0`` = (STRConv 3×3, BN, ReLU6); ``features.i.conv`` a flat
    Sequential: t = 1 → dw 0, BN 1, ReLU6 2, pw-linear 3, BN 4; else pw 0, BN 1, ReLU6 2, dw 3, BN 4,
    ReLU6 5, pw-linear 6, BN 7; then ``conv`` = (1×1 to 1280, BN, ReLU6). Ours nests as torchvision."""
    stem = _c(32, width)
    rows: list[Row] = [("backbone.features.0.0.weight", "backbone.features.0.0.weight", (stem, 3, 3, 3))]
    rows += _bn("backbone.features.0.1", "backbone.features.0.1", stem)
    inp, i = stem, 1
    for t, c, n, _ in MBV2_CFG:
        oup = _c(c, width)
        for _ in range(n):
            hidden = inp * t
            theirs, ours = f"backbone.features.{i}.conv", f"backbone.features.{i}.conv"
            if t == 1:
                layers = [
                    ("0", "0.0", (hidden, 1, 3, 3)),
                    ("1", "0.1", hidden),
                    ("3", "1", (oup, hidden, 1, 1)),
                ]
                layers.append(("4", "2", oup))
            else:
                layers = [
                    ("0", "0.0", (hidden, inp, 1, 1)),
                    ("1", "0.1", hidden),
                    ("3", "1.0", (hidden, 1, 3, 3)),
                ]
                layers += [("4", "1.1", hidden), ("6", "2", (oup, hidden, 1, 1)), ("7", "3", oup)]
            for their_i, our_i, shape in layers:
                if isinstance(shape, tuple):
                    rows.append((f"{theirs}.{their_i}.weight", f"{ours}.{our_i}.weight", shape))
                else:
                    rows += _bn(f"{theirs}.{their_i}", f"{ours}.{our_i}", shape)
            inp, i = oup, i + 1
    last = _c(1280, width)
    rows.append(("backbone.conv.0.weight", f"backbone.features.{i}.0.weight", (last, inp, 1, 1)))
    return rows + _bn("backbone.conv.1", f"backbone.features.{i}.1", last)


def head_rows(fmt: str, tasks: tuple[str, ...], dataset: str, in_ch: int) -> list[Row]:
    """ASPP heads: AdapMTL ``heads.<task>.fc<k>`` (k = 1..4, rates 6/12/18/24); DiSparse and AdaShare
    ``task<i>_fc1_c<k>`` (i = 1.. in their task order, k = 0..3); each conv1 3×3 → 1024, conv2 1×1, conv3 1×1
    to the task's channels, all with biases."""
    hidden = _c(1024, HEAD_WIDTH)
    channels = DATASETS.get(dataset).task_channels
    rows: list[Row] = []
    for i, task in enumerate(tasks):
        for k in range(4):
            theirs = f"heads.{task}.fc{k + 1}" if fmt == "adapmtl" else f"task{i + 1}_fc1_c{k}"
            ours = f"heads.{task}.branches.{k}"
            for conv, shape in (
                ("conv1", (hidden, in_ch, 3, 3)),
                ("conv2", (hidden, hidden, 1, 1)),
                ("conv3", (channels[task], hidden, 1, 1)),
            ):
                rows.append((f"{theirs}.{conv}.weight", f"{ours}.{conv}.weight", shape))
                rows.append((f"{theirs}.{conv}.bias", f"{ours}.{conv}.bias", shape[:1]))
    return rows


def our_model(arch: str, dataset: str, tasks: tuple[str, ...]):
    channels = DATASETS.get(dataset).task_channels
    width = WIDTH if arch == "deeplab_resnet34" else MBV2_WIDTH
    return ARCHS.get(arch)({t: channels[t] for t in tasks}, width=width, head_width=HEAD_WIDTH)


def table(fmt: str, arch: str, dataset: str, tasks: tuple[str, ...]) -> list[Row]:
    backbone = resnet_rows() if arch == "deeplab_resnet34" else mobilenet_rows()
    return backbone + head_rows(fmt, tasks, dataset, backbone[-5][2][0])


def threshold_keys(rows: list[Row], tasks: tuple[str, ...]) -> list[str]:
    """AdapMTL: the component thresholds plus each STRConv's registered copy of its component's."""
    keys = ["backbone.sparseThreshold", *(f"heads.{t}.sparseThreshold" for t in tasks)]
    return keys + [
        theirs.removesuffix("weight") + "sparseThreshold" for theirs, _, shape in rows if len(shape) == 4
    ]


def random_theirs(rows: list[Row], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for theirs, _, shape in rows:
        if theirs.endswith("num_batches_tracked"):
            out[theirs] = torch.tensor(7)
        elif theirs.endswith("running_var"):
            out[theirs] = torch.rand(shape, generator=g) + 0.5
        else:
            out[theirs] = torch.randn(shape, generator=g) * 0.05
    return out


def thresholded(w: torch.Tensor, s: float) -> torch.Tensor:
    return torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(torch.tensor(s)))


def stem_expected(w: torch.Tensor, running_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Their stem (BGR − Caffe mean, 0–255 input) as ours (RGB/255 − ImageNet mean / std), worked out
    independently: channel c of ours is their channel 2 − c, scaled by 255·std_c; the constant
    (255·mean_c − caffe_c) term of every tap moves into the BN mean."""
    w64 = w.double()
    std, mean = torch.tensor(INPUT_STD).double(), torch.tensor(INPUT_MEAN).double()
    caffe_rgb = torch.tensor([CAFFE_MEAN_BGR[2], CAFFE_MEAN_BGR[1], CAFFE_MEAN_BGR[0]]).double()
    ours = torch.stack([w64[:, 2 - c] * 255 * std[c] for c in range(3)], dim=1)
    offset = sum(w64[:, 2 - c].sum(dim=(1, 2)) * (255 * mean[c] - caffe_rgb[c]) for c in range(3))
    return ours.float(), (running_mean.double() - offset).float()


def test_input_constants_are_the_loaders() -> None:
    from mtlprune.datasets.base import IMAGENET_MEAN, IMAGENET_STD

    assert torch.equal(torch.tensor(INPUT_MEAN).view(3, 1, 1), IMAGENET_MEAN)
    assert torch.equal(torch.tensor(INPUT_STD).view(3, 1, 1), IMAGENET_STD)


def test_adapmtl_resnet_nyuv2_every_tensor_lands_on_its_parameter() -> None:
    rows = table("adapmtl", "deeplab_resnet34", "nyuv2", NYU_TASKS)
    model = our_model("deeplab_resnet34", "nyuv2", NYU_TASKS)
    assert sorted(ours for _, ours, _ in rows) == sorted(model.state_dict())  # the table covers our model
    theirs = random_theirs(rows)
    s = {"backbone": -3.9, "segment_semantic": -3.5, "normal": -3.0, "depth_zbuffer": -4.0}
    component = {
        "backbone.sparseThreshold": s["backbone"],
        **{f"heads.{t}.sparseThreshold": s[t] for t in NYU_TASKS},
    }
    for key in threshold_keys(rows, NYU_TASKS):
        owner = "backbone" if key.startswith("backbone.") else key.split(".")[1]
        theirs[key] = torch.tensor(component.get(key, s[owner]))
    out, report = convert_state_dict(theirs, "adapmtl", "deeplab_resnet34", "nyuv2", model)
    assert set(out) == set(model.state_dict())
    assert report["mapped"] and len(report["mapped"]) == len(rows)
    assert report["thresholds"]["head/normal"] == pytest.approx(1 / (1 + math.exp(3.0)))
    prunable = set(model.prunable_parameters())
    for their_key, our_key, shape in rows:
        value = theirs[their_key]
        if our_key in prunable:
            owner = "backbone" if our_key.startswith("backbone.") else our_key.split(".")[1]
            value = thresholded(value, s[owner])
        if our_key == "backbone.conv1.weight":
            value, _ = stem_expected(value, theirs["backbone.bn1.running_mean"])
        elif our_key == "backbone.bn1.running_mean":
            _, value = stem_expected(thresholded(theirs["backbone.conv1.weight"], s["backbone"]), value)
        elif our_key.startswith("heads.normal.") and ".conv3." in our_key:
            value = value.flip(0)  # BGR → RGB rows of the normal head's last conv
        assert tuple(out[our_key].shape) == shape, our_key
        assert torch.allclose(out[our_key].float(), value.float(), rtol=1e-5, atol=1e-6), our_key
    zeros = sum(int((out[k] == 0).sum()) for k in prunable)
    assert zeros > 0  # the soft threshold prunes
    model.load_state_dict(out)


def test_adapmtl_mobilenetv2_taskonomy_keeps_normal_order_and_reads_every_threshold() -> None:
    rows = table("adapmtl", "mobilenetv2", "taskonomy", TASKONOMY_TASKS)
    model = our_model("mobilenetv2", "taskonomy", TASKONOMY_TASKS)
    assert sorted(ours for _, ours, _ in rows) == sorted(model.state_dict())
    theirs = random_theirs(rows, seed=1)
    for key in threshold_keys(rows, TASKONOMY_TASKS):
        theirs[key] = torch.tensor(-1000.0)  # "dense": sigmoid(−1000) = 0, Ŵ = W
    out, _ = convert_state_dict(theirs, "adapmtl", "mobilenetv2", "taskonomy", model)
    for their_key, our_key, _ in rows:
        if our_key in ("backbone.features.0.0.weight", "backbone.features.0.1.running_mean"):
            continue  # the input fold, checked above
        assert torch.equal(out[our_key], theirs[their_key]), our_key  # Taskonomy normals stay RGB
    # A conv whose copy of the threshold differs from its component's is not AdapMTL's model.
    theirs["backbone.features.3.conv.3.sparseThreshold"] = torch.tensor(-999.0)
    with pytest.raises(CheckpointImportError, match=r"features\.3\.conv\.3\.sparseThreshold = -999"):
        convert_state_dict(theirs, "adapmtl", "mobilenetv2", "taskonomy", model)


def test_stem_fold_computes_what_their_stem_computed_away_from_the_border() -> None:
    rows = table("disparse", "deeplab_resnet34", "nyuv2", NYU_TASKS[:2])
    model = our_model("deeplab_resnet34", "nyuv2", NYU_TASKS[:2])
    theirs = random_theirs(rows, seed=2)
    out, _ = convert_state_dict(theirs, "disparse", "deeplab_resnet34", "nyuv2", model)
    image = torch.randint(0, 256, (1, 3, 24, 24), generator=torch.Generator().manual_seed(0)).double()  # RGB
    ours_in = (image / 255 - torch.tensor(INPUT_MEAN).double().view(1, 3, 1, 1)) / torch.tensor(
        INPUT_STD
    ).double().view(1, 3, 1, 1)
    theirs_in = image.flip(1) - torch.tensor(CAFFE_MEAN_BGR).double().view(1, 3, 1, 1)

    def stem(x, state, conv, bn):
        y = F.conv2d(x, state[f"{conv}.weight"].double(), stride=2, padding=3)
        return F.batch_norm(
            y,
            state[f"{bn}.running_mean"].double(),
            state[f"{bn}.running_var"].double(),
            state[f"{bn}.weight"].double(),
            state[f"{bn}.bias"].double(),
        )

    ours = stem(ours_in, out, "backbone.conv1", "backbone.bn1")
    reference = stem(theirs_in, theirs, "backbone.conv1", "backbone.bn1")
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # outputs whose taps never meet padding
    assert torch.allclose(ours[inner], reference[inner], atol=1e-4)
    assert not torch.allclose(ours, reference, atol=1e-4)  # the border differs (mean 1 grey level apart)


def test_disparse_masks_task_order_and_dataparallel_prefix() -> None:
    tasks = ("segment_semantic", "normal")  # DiSparse's NYU config: TASKS = ["seg", "sn"]
    rows = table("disparse", "deeplab_resnet34", "nyuv2", tasks)
    model = our_model("deeplab_resnet34", "nyuv2", tasks)
    plain = random_theirs(rows, seed=3)
    g = torch.Generator().manual_seed(4)
    theirs: dict[str, torch.Tensor] = {}
    for key, value in plain.items():
        if key.endswith(".weight") and value.ndim == 4:  # prune.identity / l1_unstructured: orig and mask
            mask = (torch.rand(value.shape, generator=g) > 0.7).float()
            theirs[f"module.{key}_orig"], theirs[f"module.{key}_mask"] = value, mask
        else:
            theirs[f"module.{key}"] = value
    found = state_dict_of(theirs, "disparse")  # a DataParallel state dict: "module." dropped
    out, report = convert_state_dict(found, "disparse", "deeplab_resnet34", "nyuv2", model)
    key = "task1_fc1_c2.conv2.weight"
    assert torch.equal(
        out["heads.segment_semantic.branches.2.conv2.weight"], found[key + "_orig"] * found[key + "_mask"]
    )
    assert out["heads.normal.branches.0.conv3.weight"].shape[0] == 3  # task2 is the normal head
    assert any("weight_orig" in t for t in report["transforms"])
    # The same checkpoint read with the tasks in another order: the head shapes say so.
    swapped = our_model("deeplab_resnet34", "nyuv2", tasks[::-1])
    with pytest.raises(
        CheckpointImportError, match=r"shape mismatches .*task1_fc1_c0\.conv3\.weight \(40, 16, 1, 1\)"
    ):
        convert_state_dict(found, "disparse", "deeplab_resnet34", "nyuv2", swapped)


def test_adashare_policy_must_run_every_block() -> None:
    rows = table("adashare", "deeplab_resnet34", "nyuv2", NYU_TASKS)
    model = our_model("deeplab_resnet34", "nyuv2", NYU_TASKS)
    theirs = random_theirs(rows, seed=5)
    for t in range(1, 4):  # 16 residual blocks, (run, skip) logits; "all_chosen" init favours running
        theirs[f"task{t}_logits"] = torch.tensor([[0.0, -10.0]] * 16)
    _, report = convert_state_dict(theirs, "adashare", "deeplab_resnet34", "nyuv2", model)
    assert report["policy"] == {"task1": "every block", "task2": "every block", "task3": "every block"}
    theirs["task2_logits"][[4, 9]] = torch.tensor([0.0, 1.0])
    with pytest.raises(CheckpointImportError, match=r"task2 skips blocks \[4, 9\]"):
        convert_state_dict(theirs, "adashare", "deeplab_resnet34", "nyuv2", model)


def test_missing_and_unexpected_keys_are_errors_naming_them() -> None:
    rows = table("adashare", "deeplab_resnet34", "nyuv2", NYU_TASKS)
    model = our_model("deeplab_resnet34", "nyuv2", NYU_TASKS)
    theirs = random_theirs(rows, seed=6)
    del theirs["backbone.blocks.2.4.bn2.running_var"]
    theirs["backbone.blocks.2.4.bn3.weight"] = torch.ones(16)
    with pytest.raises(CheckpointImportError) as info:
        convert_state_dict(theirs, "adashare", "deeplab_resnet34", "nyuv2", model)
    message = str(info.value)
    assert "missing keys: backbone.blocks.2.4.bn2.running_var" in message
    assert "unexpected keys: backbone.blocks.2.4.bn3.weight" in message
    # num_batches_tracked alone may be absent (older PyTorch): it is defaulted and reported.
    theirs = random_theirs(rows, seed=6)
    del theirs["backbone.bn1.num_batches_tracked"]
    _, report = convert_state_dict(theirs, "adashare", "deeplab_resnet34", "nyuv2", model)
    assert report["defaulted"] == ["backbone.bn1.num_batches_tracked"]
    with pytest.raises(CheckpointImportError, match="format 'disparse' has no mobilenetv2 model"):
        convert_state_dict(theirs, "disparse", "mobilenetv2", "nyuv2", model)


# ------------------------------------------------------------------------------------------ file layouts


def test_read_checkpoint_layouts(tmp_path: Path) -> None:
    state = {"backbone.conv1.weight": torch.ones(2, 3, 1, 1)}
    # AdapMTL's Trainer.save_model: the state dict beside a pickled Layout object (not a tensor).
    module = types.ModuleType("main_layout_stand_in")
    layout_cls = type("Layout", (), {"__module__": module.__name__})
    module.Layout = layout_cls
    layout = layout_cls()
    layout.state = [[{0, 1, 2}]]
    layout.score = 0.5
    sys.modules[module.__name__] = module
    try:
        torch.save(
            {"iter": 3, "state_dict": state, "layout": layout, "optimizer": {"state": {}}},
            tmp_path / "a.model",
        )
    finally:
        del sys.modules[module.__name__]
    payload = read_checkpoint(tmp_path / "a.model")  # the class is gone: an inert stand-in is built
    assert torch.equal(
        state_dict_of(payload, "adapmtl")["backbone.conv1.weight"], state["backbone.conv1.weight"]
    )
    # AdaShare's environment save: {'mtl-net': state dict, optimizers, 'iter', 'temp'}.
    torch.save({"mtl-net": state, "Adam": {"state": {}}, "iter": 9, "temp": 5.0}, tmp_path / "b.pth.tar")
    assert list(state_dict_of(read_checkpoint(tmp_path / "b.pth.tar"), "adashare")) == list(state)
    # A whole pickled model: its parameters and buffers are read back without running its code.
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    net[1].running_mean.fill_(0.25)
    torch.save(net, tmp_path / "c.pth")
    found = state_dict_of(read_checkpoint(tmp_path / "c.pth"), "disparse")
    assert found.keys() == net.state_dict().keys()
    assert all(torch.equal(found[k], v) for k, v in net.state_dict().items())
    # Anything else: a clear error naming what the file holds.
    torch.save({"iter": 1, "notes": torch.zeros(1), "cfg": {"lr": 0.1}}, tmp_path / "d.pth")
    with pytest.raises(
        CheckpointImportError,
        match=r"no state dict found: it holds a dict with keys \['cfg', 'iter', 'notes'\]",
    ):
        state_dict_of(read_checkpoint(tmp_path / "d.pth"), "adapmtl", tmp_path / "d.pth")
    (tmp_path / "e.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointImportError, match="not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "e.pth")


# ------------------------------------------------------------------------------------------- end to end


def export_adapmtl(model: nn.Module, rows: list[Row], tasks: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Our weights under AdapMTL's names and conventions (the inverse of the import): stem for BGR − Caffe
    mean input, normal head in BGR order, "dense" thresholds (sigmoid(−1000) = 0, so Ŵ = W)."""
    ours = {k: v.detach().clone() for k, v in model.state_dict().items()}
    std = torch.tensor(INPUT_STD).double().view(1, 3, 1, 1)
    w_ref = (ours["backbone.conv1.weight"].double() / (255 * std)).flip(1)
    caffe_rgb = torch.tensor(CAFFE_MEAN_BGR[::-1]).double()
    offset = (w_ref.flip(1).sum(dim=(2, 3)) * (255 * torch.tensor(INPUT_MEAN).double() - caffe_rgb)).sum(
        dim=1
    )
    ours["backbone.conv1.weight"] = w_ref.float()
    ours["backbone.bn1.running_mean"] = (ours["backbone.bn1.running_mean"].double() + offset).float()
    for k in range(4):
        for p in ("weight", "bias"):
            key = f"heads.normal.branches.{k}.conv3.{p}"
            ours[key] = ours[key].flip(0)
    theirs = {their_key: ours[our_key] for their_key, our_key, _ in rows}
    for key in threshold_keys(rows, tasks):
        theirs[key] = torch.tensor(-1000.0)
    return theirs


@pytest.mark.slow
def test_import_cli_round_trip_matches_our_evaluator_under_both_protocols(synthetic_root, tmp_path, capsys):
    from mtlprune.analysis import load_results
    from mtlprune.cli import main
    from mtlprune.engine.data import build_dataset
    from mtlprune.engine.evaluate import evaluate
    from mtlprune.spec import DataSpec, EvalSpec
    from mtlprune.store import Store
    from mtlprune.store.integrity import check_store

    torch.manual_seed(0)
    model = our_model("deeplab_resnet34", "nyuv2", NYU_TASKS)
    for module in model.modules():  # BN statistics that matter, so the stem fold is exercised
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    rows = table("adapmtl", "deeplab_resnet34", "nyuv2", NYU_TASKS)
    path = tmp_path / "best_segment_semantic_normal_depth_zbuffer.model"
    state = export_adapmtl(model, rows, NYU_TASKS)
    torch.save({"iter": 20000, "state_dict": state, "optimizer": {"state": {}}, "scheduler": {}}, path)

    store = tmp_path / "store"
    argv = ["import-checkpoint", str(path), "--format", "adapmtl", "--arch", "deeplab_resnet34"]
    argv += ["--dataset", "nyuv2", "--root", str(synthetic_root), "--store", str(store), "--device", "cpu"]
    argv += ["--width", str(WIDTH), "--head-width", str(HEAD_WIDTH)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "standard" in out and "adapmtl" in out and "segment_semantic.miou" in out and "written:" in out

    runs = [p for p in (store / "runs").iterdir()]
    assert len(runs) == 1
    result = Store(store).result(runs[0].name)
    assert result.stage == "imported" and result.source_format == "adapmtl"
    assert (
        set(result.protocol_metrics) == {"standard", "adapmtl"}
        and result.metrics == result.protocol_metrics["standard"]
    )
    data = DataSpec(dataset="nyuv2", tasks=NYU_TASKS, source="disk", root=str(synthetic_root))
    for protocol in ("standard", "adapmtl"):
        test_set = build_dataset(data, tmp_path, "test", protocol=protocol)
        batch = EvalSpec(protocol=protocol).effective_batch_size
        expected = evaluate(model, test_set, batch, torch.device("cpu"), protocol=protocol)
        assert set(expected) == set(result.protocol_metrics[protocol])
        for name, value in expected.items():
            stored = result.protocol_metrics[protocol][name]
            if math.isnan(
                value
            ):  # JSON has no NaN: stored as null (mIoU with no true positive, under adapmtl)
                assert stored is None, (protocol, name)
                continue
            assert stored == pytest.approx(value, rel=1e-4, abs=1e-6), (protocol, name)
    # The stored weights are ours again (round trip), the store is intact, the report does not list it.
    stored = torch.load(runs[0] / "model.pt", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.allclose(stored[key].float(), value.float(), rtol=1e-5, atol=1e-6), key
    assert check_store(store) == []
    assert load_results(store).empty
    # Importing the same file again finds it in the store.
    assert main(argv) == 0
    assert "already imported" in capsys.readouterr().out
    # A file that is not theirs: one line, exit 2, naming the keys.
    del state["heads.depth_zbuffer.fc3.conv2.bias"]
    torch.save({"state_dict": state}, path)
    assert main(argv) == 2
    assert "missing keys: heads.depth_zbuffer.fc3.conv2.bias" in capsys.readouterr().err
