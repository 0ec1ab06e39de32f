"""mtlprune.plan.compute: steps, time, GPU-hours and the Slurm request of a plan, by hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from mtlprune.plan.compute import (
    GIB,
    STEP_KINDS,
    DataNeeds,
    ModelSize,
    PlannedStage,
    StepTime,
    StepTimeError,
    compute_plan,
    data_key,
    eval_samples,
    fairness_steps,
    gpu_hours,
    memory_estimate,
    model_key,
    parse_step_time,
    slurm_minutes,
    slurm_time,
    stage_seconds,
)
from mtlprune.plan.stages import Stage, plan
from mtlprune.spec import TrainSpec
from mtlprune.spec.models import SlurmSpec
from tests.helpers import tiny_matrix

PAPER = {
    "train": {"steps": 20000, "batch_size": 16, "lr": 0.001},
    "finetune": {"steps": 20000, "batch_size": 16, "lr": 0.0001},
}
NYU = DataNeeds("nyuv2", "disk", "/data/nyu", expected={"train": 795, "test": 654}, reference="AdaShare")


def _stages(**overrides):
    matrix = tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.9], **{**PAPER, **overrides})
    dense, cell = plan(matrix)
    return dense, cell


def test_the_fairness_rule():
    assert fairness_steps("dense", 20000, 5000) == 5000  # the finetune budget
    assert fairness_steps("init", 20000, 5000) == 25000  # dense + finetune
    with pytest.raises(ValueError, match="starts_from must be 'dense' or 'init', got 'x'"):
        fairness_steps("x", 1, 1)


def test_steps_total_counts_the_dense_stage_of_a_cell_that_starts_from_it():
    dense, cell = _stages()
    assert PlannedStage(dense, 20000, "dense").steps_total == 20000
    from_dense = PlannedStage(cell, 22000, "masked", "dense")
    assert from_dense.steps_total == 42000 and from_dense.recipe.lr == 0.0001  # the finetune recipe
    from_init = PlannedStage(cell, 40000, "masked", "init")
    assert from_init.steps_total == 40000 and from_init.recipe.lr == 0.001  # the dense recipe


def test_a_number_is_every_kind_s_step_time():
    step = parse_step_time("0.25")
    assert step.seconds == dict.fromkeys(STEP_KINDS, 0.25) and step.setting == {}
    assert step.describe() == "0.25 s per step (--step-time)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", "--step-time '-1' must be a number of seconds > 0, got -1.0"),
        ("0", "--step-time '0' must be a number of seconds > 0, got 0.0"),
        ("nan", "--step-time 'nan' must be a number of seconds > 0, got nan"),
        ("inf", "--step-time 'inf' must be a number of seconds > 0, got inf"),
        ("fast", "--step-time 'fast': neither a number of seconds nor an existing file"),
        ("missing.json", "--step-time 'missing.json': neither a number of seconds nor an existing file"),
    ],
)
def test_bad_step_times_name_the_value(text, message):
    with pytest.raises(StepTimeError) as info:
        parse_step_time(text)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def _gpu_check_json(**changes) -> dict:
    """What `python -m tools.gpu_check --json FILE` writes (the keys plan reads, and a few it ignores)."""
    data = {
        "format": "mtl-prunebench step times 1",
        "device": "NVIDIA H200",
        "setting": {"arch": "deeplab_resnet34", "size": 321, "batch": 16, "width": 1.0, "head_width": 1.0,
                    "amp": "none", "channels_last": False, "steps": 200},
        "dense": {"step_ms": 200.0},
        "seconds_per_step": {"dense": 0.2, "masked": 0.21, "adapmtl": 0.3},
        "peak_memory_gib": {"dense": 12.5, "masked": 12.75, "adapmtl": 14.0},
    }  # fmt: skip
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return data


def test_a_gpu_check_json_gives_per_kind_times_setting_and_peak_memory(tmp_path):
    path = tmp_path / "h200.json"
    path.write_text(json.dumps(_gpu_check_json()))
    step = parse_step_time(str(path))
    assert step.seconds == {"dense": 0.2, "masked": 0.21, "adapmtl": 0.3}
    assert step.peak_memory_gib == {"dense": 12.5, "masked": 12.75, "adapmtl": 14.0}
    assert step.device == "NVIDIA H200" and step.setting["size"] == 321 and step.source == str(path)
    assert step.describe() == (
        f"dense 0.2 s, masked 0.21 s, adapmtl 0.3 s per step, measured on NVIDIA H200 for deeplab_resnet34 "
        f"w1/h1 321×321 batch 16 amp none ({path})"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seconds_per_step.masked": None}, "missing key 'seconds_per_step.masked'"),
        ({"seconds_per_step": None}, "missing key 'seconds_per_step.dense'"),
        ({"setting.batch": None}, "missing key 'setting.batch'"),
        ({"device": None}, "missing key 'device'"),
        (
            {"seconds_per_step.dense": -0.2},
            "seconds_per_step.dense must be a number of seconds > 0, got -0.2",
        ),
        ({"seconds_per_step.adapmtl": "0.3"}, "seconds_per_step.adapmtl must be a number of seconds > 0"),
        (
            {"seconds_per_step.dense": True},
            "seconds_per_step.dense must be a number of seconds > 0, got True",
        ),
    ],
)
def test_a_json_without_the_expected_keys_names_the_file_and_key(tmp_path, change, message):
    path = tmp_path / "step.json"
    path.write_text(json.dumps(_gpu_check_json(**change)))
    with pytest.raises(StepTimeError) as info:
        parse_step_time(str(path))
    assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)


def test_a_file_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "times.json"
    path.write_text("dense: 0.2\n")
    with pytest.raises(StepTimeError, match=f"--step-time {path}: not a readable JSON file"):
        parse_step_time(str(path))


def test_stage_time_is_steps_at_the_step_time_plus_evaluation():
    dense, cell = _stages()
    step = parse_step_time("0.25")
    # 20,000 steps × 0.25 s = 5000 s; evaluating NYU-v2's 654 test frames: 654 / 16 × 0.25 s / 3 = 3.40625 s
    assert stage_seconds(PlannedStage(dense, 20000, "dense"), step, NYU) == pytest.approx(5003.40625)
    assert stage_seconds(PlannedStage(dense, 20000, "dense"), step) == 5000.0  # counts unknown: no eval
    per_kind = StepTime({"dense": 0.2, "masked": 0.21, "adapmtl": 0.3}, "x")
    assert stage_seconds(PlannedStage(cell, 20000, "adapmtl", "dense"), per_kind) == pytest.approx(6000.0)


def test_best_val_adds_the_validation_split_every_val_every_steps():
    dense, _ = _stages()
    data = dense.spec.data.model_copy(update={"val_fraction": 0.1})
    selection = dense.spec.eval.model_copy(update={"selection": "best_val", "val_every": 50})
    stage = Stage(dense.spec.model_copy(update={"data": data, "eval": selection}))
    # 10% of 795 train frames = 79.5 → 80 (as the engine carves it), every 50 of 20,000 steps = 400 times
    assert eval_samples(PlannedStage(stage, 20000, "dense"), NYU) == 654 + 80 * 400
    assert eval_samples(PlannedStage(dense, 20000, "dense"), NYU) == 654  # selection 'last': the test split
    assert eval_samples(PlannedStage(dense, 20000, "dense"), None) is None


def test_paper_matrix_gpu_hours():
    # The ResNet-34 paper config's cells: 202,000 optimizer steps; at 0.25 s per step 50,500 s = 14.0 h.
    assert gpu_hours(202_000 * 0.25) == pytest.approx(14.03, abs=0.005)
    assert f"{gpu_hours(202_000 * 0.25):.1f}" == "14.0"


@pytest.mark.parametrize(
    ("seconds", "minutes", "text"),
    [
        (0.0, 15, "0:15:00"),  # at least one grain
        (600.0, 15, "0:15:00"),  # × 1.5 = exactly 15 min
        (601.0, 30, "0:30:00"),
        (5000.0, 135, "2:15:00"),  # 20k steps at 0.25 s: 7500 s = 125 min → 135
        (10000.0, 255, "4:15:00"),  # 40k steps at 0.25 s: 15,000 s = 250 min → 255
        (57_600.0, 1440, "1-00:00:00"),  # 16 h × 1.5 = 24 h
        (61_000.0, 1530, "1-01:30:00"),  # 25.4 h → 25 h 30 min
    ],
)
def test_slurm_time_is_the_estimate_times_1_5_rounded_up_to_15_minutes(seconds, minutes, text):
    assert slurm_minutes(seconds) == minutes and slurm_time(minutes) == text
    assert SlurmSpec(time=text).timeout_min == minutes  # sbatch --time reads it back


def test_slurm_minutes_rejects_negative_time():
    with pytest.raises(ValueError, match="expected finite seconds >= 0"):
        slurm_minutes(-1.0)


SIZE = ModelSize(
    "deeplab_resnet34", 1.0, 1.0, ("segment_semantic",),
    parameters={"backbone": 600_000, "head/segment_semantic": 400_000},
    prunable={"backbone": 550_000, "head/segment_semantic": 350_000},
    activations_per_sample=2_000_000,
)  # fmt: skip


def test_memory_rule():
    adam = TrainSpec(steps=1, batch_size=16, optimizer="adam")
    m = memory_estimate(SIZE, adam, loader_workers=2)
    # device: 1M params × 4 B × (weights, grads, 2 Adam moments) + 900k mask bytes + 2M × 16 × 4 B activations
    assert m.device_bytes == 1_000_000 * 16 + 900_000 + 2_000_000 * 16 * 4 == 144_900_000
    # host: 4 GiB + 2 loader workers × 1 GiB + 3 copies of 1M × 4 B × (weights + 2 moments)
    assert m.host_bytes == 6 * GIB + 36_000_000
    assert m.slurm_mem_gib == math.ceil((6 * GIB + 36_000_000) * 1.5 / GIB) == 10
    assert not m.measured and m.activations_known
    on_cpu = memory_estimate(SIZE, adam, loader_workers=2, on_cpu=True)  # training in host memory
    assert on_cpu.host_bytes == m.host_bytes + m.device_bytes
    sgd = TrainSpec(steps=1, batch_size=16, optimizer="sgd", momentum=0.0, amp="bf16")
    # no optimizer slots; activations in 2 bytes
    assert memory_estimate(SIZE, sgd).device_bytes == 1_000_000 * 8 + 900_000 + 2_000_000 * 16 * 2
    measured = memory_estimate(SIZE, adam, measured_peak_gib=12.5)
    assert measured.device_bytes == 12.5 * GIB and measured.measured
    unknown = ModelSize("x", 1.0, 1.0, (), {"backbone": 10}, {"backbone": 10}, activations_per_sample=None)
    assert not memory_estimate(unknown, adam).activations_known
    assert SIZE.total == 1_000_000 and SIZE.total_prunable == 900_000 and SIZE.heads_share == 0.4


def test_data_needs_counts_and_mismatches():
    found = DataNeeds("nyuv2", "disk", "/d", {"train": 795, "test": 654}, found={"train": 795, "test": 650})
    assert found.count("test") == 650 and found.mismatches() == ["test: found 650, expected 654"]
    assert NYU.count("train") == 795 and NYU.mismatches() == []  # not readable: the expected counts
    taskonomy = DataNeeds("taskonomy", "disk", "/t", {}, found=None, problem="no listing")
    assert taskonomy.count("test") is None and taskonomy.mismatches() == []


def test_compute_plan_prices_pending_stages_and_the_slurm_request():
    dense, cell = _stages()
    planned = [PlannedStage(dense, 20000, "dense"), PlannedStage(cell, 40000, "masked", "init")]
    models = {model_key(dense.spec): SIZE}
    data = {data_key(dense.spec.data): NYU}
    costs = compute_plan(planned, step_time=parse_step_time("0.25"), data=data, models=models)
    eval_s = 654 / 16 * 0.25 / 3
    assert [c.seconds for c in costs.stages] == pytest.approx([5000 + eval_s, 10000 + eval_s])
    assert costs.steps() == 60000 and costs.steps("cell") == 40000
    assert costs.pending_seconds == pytest.approx(15000 + 2 * eval_s)
    assert costs.slurm_minutes("dense") == 135 and costs.slurm_minutes("cell") == 255
    assert costs.slurm_minutes() == 255 and costs.slurm_mem_gib() == 7  # (4 GiB + 36 MB) × 1.5 → 7
    assert [c.planned.kind for c in costs.over_limit(240)] == ["cell"]
    done = compute_plan(planned, step_time=parse_step_time("0.25"), done=[dense.run_id])
    assert done.pending_seconds == pytest.approx(10000.0) and done.slurm_minutes("dense") is None


def test_without_a_step_time_the_measured_stage_times_price_the_pending_stages():
    dense, cell = _stages()
    planned = [PlannedStage(dense, 20000, "dense"), PlannedStage(cell, 20000, "masked", "dense")]
    measured = {dense.run_id: 4000.0, cell.run_id: None}  # mtlprune.plan.estimate: one without a time
    costs = compute_plan(planned, measured=measured)
    assert [c.seconds for c in costs.stages] == [4000.0, None]
    assert costs.pending_seconds is None and costs.slurm_minutes("dense") == 105  # 6000 s = 100 min
    assert costs.slurm_minutes("cell") is None


def test_a_measurement_of_another_setting_is_used_as_it_is_with_a_note_and_no_peak(tmp_path):
    dense, _ = _stages()  # tiny: deeplab_resnet34 w0.125/h0.03125, crop 32×32, batch 16
    path = tmp_path / "h200.json"
    path.write_text(json.dumps(_gpu_check_json()))
    step = parse_step_time(str(path))
    planned = PlannedStage(dense, 100, "dense")
    assert step.differences(planned) == [
        "width 0.125 (measured: 1.0)",
        "head_width 0.03125 (measured: 1.0)",
        "crop 32×32 (measured: 321×321)",
    ]
    costs = compute_plan([planned], step_time=step, models={model_key(dense.spec): SIZE})
    assert costs.stages[0].seconds == pytest.approx(20.0)  # 100 × 0.2 s, unscaled
    assert costs.notes == [
        "step times were measured on another setting for some stages and are used as they are: 1 stage(s) "
        "with width 0.125 (measured: 1.0); 1 stage(s) with head_width 0.03125 (measured: 1.0); 1 stage(s) "
        "with crop 32×32 (measured: 321×321)"
    ]
    assert not costs.stages[0].memory.measured  # the peak of another setting says nothing of this one
    same = {"arch": "deeplab_resnet34", "width": 0.125, "head_width": 0.03125, "size": 32, "batch": 16,
            "amp": "none"}  # fmt: skip
    matching = StepTime(step.seconds, "x", same, "cpu", {"dense": 1.5})
    costs = compute_plan([planned], step_time=matching, models={model_key(dense.spec): SIZE})
    assert costs.notes == [] and costs.stages[0].memory.device_bytes == 1.5 * GIB
