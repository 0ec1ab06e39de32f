"""The control row (`dense-finetune`): planned once per setting and seed, ΔT against it in load_results."""

from __future__ import annotations

import json
import math

import pytest

from mtlprune.analysis import load_results
from mtlprune.analysis.delta import delta_m, delta_t
from mtlprune.execution.matrix import run_matrix
from mtlprune.spec import CONTROL_METHOD, ConfigError, MethodSpec, parse_matrix
from mtlprune.store import Store
from tests.helpers import tiny_matrix, tiny_matrix_dict


def test_one_control_per_setting_and_seed_when_a_method_starts_from_dense():
    matrix = tiny_matrix(methods=[{"name": "magnitude"}, {"name": "snip"}], seeds=[0, 1], controls=True)
    cells = matrix.expand()
    controls = [c for c in cells if c.method.name == CONTROL_METHOD]
    assert [c.seed for c in controls] == [0, 1] and all(c.target_sparsity == 0.0 for c in controls)
    assert len(cells) == 2 * (2 * 2 + 1)  # seeds × (methods × sparsities + control)
    assert cells[4] == controls[0]  # each (dataset, arch, seed) block ends with its control
    magnitude = cells[0]
    assert magnitude.control() == controls[0]
    assert controls[0].dense() == magnitude.dense() and controls[0].finetune == magnitude.finetune


def test_no_control_without_a_method_that_starts_from_dense_or_with_controls_off():
    assert all(
        c.method.name != CONTROL_METHOD
        for c in tiny_matrix(methods=[{"name": "snip"}], controls=True).expand()
    )
    assert all(c.method.name != CONTROL_METHOD for c in tiny_matrix(controls=False).expand())


def test_the_control_is_not_a_method_of_the_matrix_and_only_runs_at_zero():
    with pytest.raises(ConfigError, match="'dense-finetune' is the control row"):
        parse_matrix(tiny_matrix_dict(methods=[{"name": CONTROL_METHOD}]), "<test>")
    cell = tiny_matrix().expand()[0]
    with pytest.raises(ValueError, match="unpruned control: its target_sparsity must be 0"):
        cell.model_validate({**cell.model_dump(), "method": MethodSpec(name=CONTROL_METHOD).model_dump()})
    with pytest.raises(ValueError, match="target_sparsity must be > 0 for method 'random'"):
        cell.model_validate({**cell.model_dump(), "target_sparsity": 0.0})


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    matrix = tiny_matrix(
        methods=[{"name": "magnitude"}, {"name": "snip"}],
        sparsities=[0.5],
        controls=True,
        train={"steps": 30, "batch_size": 4, "lr": 0.003},
    )
    store = Store(tmp_path_factory.mktemp("control"))
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    return matrix, store


@pytest.mark.slow
def test_the_control_finetunes_the_dense_model_unpruned(ran):
    matrix, store = ran
    control = matrix.expand()[-1]
    result = store.result(control.run_id)
    assert result.sparsity["achieved_sparsity"] == pytest.approx(0.0, abs=1e-6)
    assert result.steps_method == matrix.finetune.steps
    assert result.steps_total == matrix.train.steps + matrix.finetune.steps
    assert result.starts_from == "dense"


@pytest.mark.slow
def test_load_results_gives_delta_t_against_the_dense_model_and_against_the_control(ran):
    matrix, store = ran
    frame = load_results(store.root).set_index("method_name")
    control = matrix.expand()[-1]
    control_metrics = store.result(control.run_id).metrics
    dense_metrics = store.result(control.dense().run_id).metrics
    tasks = list(matrix.datasets[0].tasks)
    for name in ("magnitude", "snip", CONTROL_METHOD):
        row = frame.loc[name]
        spec = json.loads((store.run_dir(row["run_id"]) / "spec.json").read_text())
        assert spec["control_run_id"] == row["control_run_id"] == control.run_id
        metrics = store.result(row["run_id"]).metrics
        assert row["delta_t"] == pytest.approx(_delta(metrics, dense_metrics, tasks), nan_ok=True)
        assert row["delta_t_control"] == pytest.approx(_delta(metrics, control_metrics, tasks), nan_ok=True)
        if math.isfinite(row["delta_t_control"]):
            assert row["delta_m_control"] == pytest.approx(delta_m(metrics, control_metrics, tasks))
    assert frame.loc[CONTROL_METHOD, "delta_t_control"] == 0.0
    assert frame.loc[CONTROL_METHOD, "target_sparsity"] == 0.0


def _delta(metrics: dict, reference: dict, tasks: list[str]) -> float:
    """ΔT, or NaN where a reference metric is 0 (a 30-step model can score exactly 0 somewhere)."""
    try:
        return delta_t(metrics, reference, tasks)["delta_t"]
    except ValueError:
        return math.nan


@pytest.mark.slow
def test_status_warns_when_the_dense_stage_has_not_converged(ran, tmp_path, capsys):
    """Two verdicts: the dense loss still falling at the end, and the control gaining > 5 ΔT points."""
    import shutil

    import yaml

    from mtlprune.cli import main
    from tests.helpers import tiny_matrix_dict

    matrix, store = ran
    copy = tmp_path / "store"
    shutil.copytree(store.root, copy)
    dense_id = matrix.dense_stages()[0].run_id
    control_id = matrix.expand()[-1].run_id
    config = tmp_path / "m.yaml"
    config.write_text(
        yaml.safe_dump(
            tiny_matrix_dict(
                methods=[{"name": "magnitude"}, {"name": "snip"}],
                sparsities=[0.5],
                controls=True,
                train={"steps": 30, "batch_size": 4, "lr": 0.003},
            )
        )
    )
    assert main(["status", str(config), "--store", str(copy)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "its loss fell" not in out  # 30 steps: a 6-step window, too few for a verdict
    tasks = list(matrix.datasets[0].tasks)
    gain = _delta(store.result(control_id).metrics, store.result(dense_id).metrics, tasks)
    said = f"the control row (dense-finetune) moves ΔT by {gain:+.1f} from the finetune budget alone"
    assert (said in out) == (abs(gain) > 5)  # a 30-step dense model is far from converged

    dense_path, control_path = (
        copy / "runs" / dense_id / "result.json",
        copy / "runs" / control_id / "result.json",
    )
    dense = json.loads(dense_path.read_text())
    dense["convergence"].update(rel_drop=0.12, converged=False)
    dense_path.write_text(json.dumps(dense))
    control = json.loads(control_path.read_text())
    control["metrics"] = {
        k: v * (1.5 if "miou" in k or "pixel_acc" in k else 1.0) for k, v in dense["metrics"].items()
    }
    control_path.write_text(json.dumps(control))
    assert main(["status", str(config), "--store", str(copy)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "NOT CONVERGED: its loss fell by 12.0% within the last 20% of training" in out
    # segmentation mIoU and pixel accuracy 1.5×: ΔT_seg = 100 (50 + 50), over 3 tasks = +33.3
    assert "the control row (dense-finetune) moves ΔT by +33.3 from the finetune budget alone" in out
