"""`mtlprune run CONFIG key.path=value`: overrides applied before validation, with the config's errors."""

from __future__ import annotations

import json

import pytest
import yaml

from mtlprune.cli import main
from mtlprune.spec import ConfigError, load_matrix
from mtlprune.spec.overrides import apply_overrides, parse_key_path, parse_override
from tests.helpers import tiny_matrix_dict


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_matrix_dict()))
    return path


def test_key_paths_parse_names_and_indices():
    assert parse_key_path("train.steps", "t") == ["train", "steps"]
    assert parse_key_path("datasets[0].synthetic.n_train", "t") == ["datasets", 0, "synthetic", "n_train"]
    assert parse_key_path("methods[12].params.ramp_fraction", "t") == [
        "methods",
        12,
        "params",
        "ramp_fraction",
    ]
    for bad in ("1train", "train..steps", "[0].x", "train.", "datasets[x]"):
        with pytest.raises(ConfigError, match="bad key path"):
            parse_key_path(bad, "t")


def test_values_are_read_as_yaml():
    assert parse_override("train.steps=200") == (["train", "steps"], 200)
    assert parse_override("sparsities=[0.5, 0.9]") == (["sparsities"], [0.5, 0.9])
    assert parse_override("train.task_weights=null") == (["train", "task_weights"], None)
    assert parse_override("name=my-run") == (["name"], "my-run")
    assert parse_override("datasets[0].root=/a=b") == (["datasets", 0, "root"], "/a=b")  # first '=' splits
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_override("train.steps")


def test_overrides_apply_in_order_without_touching_the_input():
    data = {"train": {"steps": 1}, "datasets": [{"root": "a"}, {"root": "b"}]}
    out = apply_overrides(
        data, ["train.steps=5", "datasets[1].root=c", "eval.protocol=adapmtl", "train.steps=7"]
    )
    assert out == {
        "train": {"steps": 7},
        "datasets": [{"root": "a"}, {"root": "c"}],
        "eval": {"protocol": "adapmtl"},
    }
    assert data == {"train": {"steps": 1}, "datasets": [{"root": "a"}, {"root": "b"}]}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("datasets[3].root=x", r"datasets has 2 item\(s\), so \[3\] does not exist"),
        ("train.steps.x=1", r"train.steps holds 1, not a mapping"),
        ("methods[0].name=x", r"methods is not a list in the config"),
        ("train[0]=1", r"train holds \{'steps': 1\}, not a list"),
    ],
)
def test_impossible_paths_name_the_override(override, message):
    data = {"train": {"steps": 1}, "datasets": [{"root": "a"}, {"root": "b"}]}
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(data, [override])
    assert repr(override) in str(info.value)


def test_load_matrix_validates_the_overridden_config_with_key_paths(config):
    matrix = load_matrix(config, ["train.steps=11", "sparsities=[0.7]", "datasets[0].synthetic.n_train=6"])
    assert (matrix.train.steps, matrix.sparsities, matrix.datasets[0].synthetic.n_train) == (11, [0.7], 6)
    # the same run ids as a config file that says the same thing
    edited = tiny_matrix_dict(sparsities=[0.7], train={**tiny_matrix_dict()["train"], "steps": 11})
    edited["datasets"][0]["synthetic"]["n_train"] = 6
    path = config.parent / "edited.yaml"
    path.write_text(yaml.safe_dump(edited))
    assert [c.run_id for c in matrix.expand()] == [c.run_id for c in load_matrix(path).expand()]
    with pytest.raises(ConfigError) as info:
        load_matrix(config, ["train.steps=0"])
    assert f"{config} with overrides train.steps=0" in str(info.value)
    assert "train.steps: Input should be greater than or equal to 1 (got 0)" in str(info.value)


def test_plan_accepts_overrides_and_bad_ones_exit_2(config, tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["plan", str(config), "sparsities=[0.5]", "--store", store]) == 0
    assert "1 dense stage(s), 2 cell(s)" in capsys.readouterr().out
    assert main(["plan", str(config), "train.stepz=3", "--store", store]) == 2
    err = capsys.readouterr().err
    assert "train: unknown key 'stepz'; did you mean 'steps'" in err


def test_the_manifest_records_the_overrides(config, tmp_path):
    from mtlprune.store import Store
    from mtlprune.store.manifest import read_manifest, write_manifest

    matrix = load_matrix(config, ["finetune.steps=3"])
    write_manifest(matrix, Store(tmp_path / "store"), ["finetune.steps=3"])
    manifest = read_manifest(tmp_path / "store", "tiny")
    assert manifest.overrides == ["finetune.steps=3"]
    assert manifest.spec["finetune"]["steps"] == 3
    assert json.loads(manifest.path.read_text())["overrides"] == ["finetune.steps=3"]
