"""GPU path options: mixed precision (part of identity), channels-last, pinned memory; CUDA when present."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mtlprune.methods  # noqa: F401  (registers the built-in methods)
from mtlprune.engine.build import pin_memory
from mtlprune.engine.data import batch_stream
from mtlprune.engine.runner import run_stage
from mtlprune.engine.train import StepRunner
from mtlprune.plan.stages import plan
from mtlprune.registry import ARCHS
from mtlprune.spec import RuntimeSpec, TrainSpec
from mtlprune.store import Store
from tests.engine.test_resume import Killed, _fingerprint, _kill_at
from tests.helpers import tiny_matrix
from tools.gpu_check import check, main, repeatability, synthetic_batch

TASKS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}


def _runner(**kwargs) -> StepRunner:
    torch.manual_seed(0)
    model = ARCHS.get("deeplab_resnet34")(TASKS, width=0.125, head_width=0.0625)
    spec = TrainSpec(
        steps=3, batch_size=2, amp=kwargs.pop("amp", "none"), optimizer=kwargs.pop("optimizer", "adam")
    )
    return StepRunner(model, "nyuv2", spec, torch.device("cpu"), **kwargs)


def test_mixed_precision_is_part_of_identity_and_the_default_keeps_old_ids():
    fp32 = tiny_matrix()
    bf16 = tiny_matrix(train={"steps": 6, "batch_size": 4, "lr": 0.003, "amp": "bf16"})
    explicit = tiny_matrix(train={"steps": 6, "batch_size": 4, "lr": 0.003, "amp": "none"})
    assert [c.run_id for c in explicit.expand()] == [c.run_id for c in fp32.expand()]
    assert not {c.run_id for c in bf16.expand()} & {c.run_id for c in fp32.expand()}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_mixed_precision_step_holds_the_masks_and_stays_close_to_fp32(amp):
    batch = synthetic_batch(2, 32, torch.device("cpu"), pin=False)
    reference = _runner()
    params = reference.params
    masks = {
        n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) > 0.5 for n, p in params.items()
    }
    reference.set_masks(masks)
    mixed = _runner(amp=amp)
    mixed.set_masks(masks)
    assert (mixed.scaler is not None) == (amp == "fp16")
    torch.manual_seed(5)  # the same dropout draws
    exact = reference(batch, 0)["loss"]
    torch.manual_seed(5)
    low = mixed(batch, 0)["loss"]
    assert low == pytest.approx(exact, rel=0.05)  # the same model and batch at lower precision
    for name, mask in masks.items():
        assert not mixed.params[name].detach()[~mask].any()  # pruned weights stay exactly zero
    state = mixed.state_dict()
    assert (state["scaler"] is not None) == (amp == "fp16")


def test_channels_last_gives_the_same_step_on_cpu():
    batch = synthetic_batch(2, 32, torch.device("cpu"), pin=False)
    # SGD: Adam's first update is about lr·sign(g), which a last-bit difference of a near-zero g flips
    plain, last = _runner(optimizer="sgd"), _runner(channels_last=True, optimizer="sgd")
    for runner in (plain, last):  # dropout draws in memory order, which channels-last permutes
        for module in runner.model.modules():
            if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.p = 0.0
    conv = next(p for p in last.model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    loss_last = last(batch, 0)["loss"]
    assert loss_last == pytest.approx(plain(batch, 0)["loss"], rel=1e-5)
    after_plain = {k: v for k, v in plain.model.state_dict().items()}
    for key, value in last.model.state_dict().items():
        torch.testing.assert_close(value, after_plain[key], rtol=1e-4, atol=1e-5)


def test_pinned_memory_is_used_only_with_cuda():
    assert pin_memory(RuntimeSpec(device="cpu"), torch.device("cpu")) is False
    assert pin_memory(RuntimeSpec(pin_memory=True), torch.device("cuda")) is True
    assert pin_memory(RuntimeSpec(), torch.device("cuda")) is True
    dataset = [{"input": torch.full((3,), float(i))} for i in range(8)]

    class Items(list):
        def set_epoch(self, epoch: int) -> None:
            return None

    items = Items(dataset)
    pinned = list(batch_stream(items, 2, seed=0, steps=3, pin_memory=True))
    plain = list(batch_stream(items, 2, seed=0, steps=3))
    assert all(torch.equal(a["input"], b["input"]) for a, b in zip(pinned, plain, strict=True))
    assert pinned[0]["input"].is_pinned() == torch.cuda.is_available()


@pytest.mark.slow
def test_a_killed_fp16_cell_resumes_with_its_gradient_scaler(tmp_path):
    matrix = tiny_matrix(
        methods=[{"name": "magnitude"}],
        sparsities=[0.5],
        train={"steps": 4, "batch_size": 4, "lr": 0.003, "amp": "fp16"},
        finetune={"steps": 5, "batch_size": 4, "amp": "fp16"},
        runtime={"device": "cpu", "checkpoint_every": 2, "log_every": 1},
    )
    dense, cell = plan(matrix)[:2]
    reference = Store(tmp_path / "reference")
    assert run_stage(dense, reference, matrix.runtime).status == "done"
    assert run_stage(cell, reference, matrix.runtime).status == "done"
    store = Store(tmp_path / "killed")
    shutil.copytree(reference.run_dir(dense.run_id), store.run_dir(dense.run_id))
    shutil.copytree(reference.root / "data", store.root / "data")
    progress, _ = _kill_at(4)
    with pytest.raises(Killed):
        run_stage(cell, store, matrix.runtime, progress)
    assert run_stage(cell, store, matrix.runtime).status == "done"
    assert _fingerprint(store, cell.run_id) == _fingerprint(reference, cell.run_id)


def test_gpu_check_reports_each_variant_and_consistent_ratios():
    out = check(size=32, batch=2, steps=2, warmup=1, width=0.125, head_width=0.0625, device="cpu")
    assert set(out) >= {"dense", "masked", "adapmtl", "ratio_to_dense", "device", "setting"}
    for variant in ("masked", "adapmtl"):
        ms = out[variant]["step_ms"]
        assert ms > 0 and out[variant]["steps_per_s"] == pytest.approx(1e3 / ms)
        assert out["ratio_to_dense"][variant] == pytest.approx(ms / out["dense"]["step_ms"])
    assert out["dense"]["peak_memory_gib"] is None  # no device memory to report on a CPU


def test_gpu_check_times_each_variant_with_one_model_alive(monkeypatch):
    # The peak memory of a variant must not include an earlier variant's weights (the masked step's once
    # held the dense model's prunable weights: +0.34 GiB for Deeplab-ResNet34 on an H200). Counted here as
    # the parameter elements alive when each variant's timing starts: one model's, plus AdapMTL's thresholds.
    import gc

    import tools.gpu_check as gpu_check

    def parameter_elements() -> int:
        gc.collect()
        return sum(o.numel() for o in gc.get_objects() if type(o) is torch.nn.Parameter)

    before = parameter_elements()  # whatever earlier tests left alive in this process
    alive: list[int] = []
    timer = gpu_check.time_steps

    def counting(step, steps, warmup, device):
        alive.append(parameter_elements() - before)
        return timer(step, steps, warmup, device)

    monkeypatch.setattr(gpu_check, "time_steps", counting)
    out = gpu_check.check(size=32, batch=2, steps=1, warmup=0, width=0.125, head_width=0.0625, device="cpu")
    assert out["setting"]["deterministic"] is True  # timed under the stage's determinism contract
    model = ARCHS.get("deeplab_resnet34")(TASKS, width=0.125, head_width=0.0625)
    one_model = sum(p.numel() for p in model.parameters())
    components = {model.component_of(n) for n in model.prunable_parameters()}
    del model
    assert alive == [one_model, one_model, one_model + len(components)]  # + AdapMTL's logit per component


def test_gpu_check_can_time_the_steps_without_the_deterministic_fill(monkeypatch):
    # --no-fill-uninitialized: the timed steps run with torch's NaN fill of fresh tensors off (what it
    # costs on a GPU, where deterministic mode is on), and the setting comes back after, for each variant.
    import tools.gpu_check as gpu_check

    seen: list[bool] = []
    timer = gpu_check.time_steps

    def recording(step, steps, warmup, device):
        seen.append(torch.utils.deterministic.fill_uninitialized_memory)
        return timer(step, steps, warmup, device)

    monkeypatch.setattr(gpu_check, "time_steps", recording)
    assert torch.utils.deterministic.fill_uninitialized_memory is True  # torch's default, as every stage
    small = {"size": 32, "batch": 2, "steps": 1, "warmup": 0, "width": 0.125, "head_width": 0.0625}
    out = gpu_check.check(**small, device="cpu", fill_uninitialized=False)
    assert seen == [False, False, False] and out["setting"]["fill_uninitialized"] is False
    assert torch.utils.deterministic.fill_uninitialized_memory is True
    out = gpu_check.check(**small, device="cpu")
    assert seen[3:] == [True, True, True] and out["setting"]["fill_uninitialized"] is True
    with pytest.raises(RuntimeError), gpu_check.uninitialized_fill(False):
        assert torch.utils.deterministic.fill_uninitialized_memory is False
        raise RuntimeError("a failed step")
    assert torch.utils.deterministic.fill_uninitialized_memory is True  # restored on the way out too


def test_gpu_check_json_is_what_plan_step_time_reads(tmp_path, capsys):
    from mtlprune.plan.compute import parse_step_time

    path = tmp_path / "cpu.json"
    args = ["--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--width", "0.125",
            "--head-width", "0.0625", "--device", "cpu", "--json", str(path)]  # fmt: skip
    assert main(args) == 0
    assert f"wrote {path}" in capsys.readouterr().err
    written = json.loads(path.read_text())
    step = parse_step_time(str(path))
    assert step.seconds == {k: written[k]["step_ms"] / 1e3 for k in ("dense", "masked", "adapmtl")}
    assert step.device == "cpu" and step.peak_memory_gib == {}  # no device memory on a CPU
    assert step.setting == {"arch": "deeplab_resnet34", "width": 0.125, "head_width": 0.0625, "size": 32,
                            "batch": 2, "amp": "none"}  # fmt: skip
    assert written["setting"]["deterministic"] is True  # as a stage trains (cuDNN without autotuning)
    assert main([*args, "--nondeterministic"]) == 0
    assert json.loads(path.read_text())["setting"]["deterministic"] is False
    with pytest.raises(SystemExit):
        main(["--repeat", "2", "--json", str(path)])  # a determinism check times nothing
    assert "--json records step times" in capsys.readouterr().err


def test_repeated_trainings_are_bit_identical_on_a_cpu():
    out = repeatability(repeat=2, size=32, batch=2, steps=3, width=0.125, head_width=0.0625, device="cpu")
    assert out["max_loss_difference"] == 0.0 and out["max_weight_difference"] == 0.0 and out["bit_identical"]
    assert out["fill_uninitialized"] is True
    out = repeatability(
        repeat=2,
        size=32,
        batch=2,
        steps=3,
        width=0.125,
        head_width=0.0625,
        device="cpu",
        fill_uninitialized=False,
    )
    assert out["bit_identical"] and out["fill_uninitialized"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_path_with_bf16_and_channels_last():
    out = check(
        size=64, batch=4, steps=3, warmup=2, width=0.25, head_width=0.125, amp="bf16", channels_last=True
    )
    assert out["device"] != "cpu" and out["dense"]["peak_memory_gib"] > 0
