"""Spec validation errors, content-hash identity (pinned), and deterministic expansion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from mtlprune.spec import (
    ArchSpec,
    ConfigError,
    DataSpec,
    DenseSpec,
    EvalSpec,
    MatrixSpec,
    MethodSpec,
    RunSpec,
    SyntheticSpec,
    TrainSpec,
    canonical_json,
    load_matrix,
    semantic_dump,
)
from tests.helpers import TASKS3, tiny_matrix, tiny_matrix_dict

SNAPSHOT = Path(__file__).parents[1] / "data" / "spec_defaults.json"


def _cell(**overrides) -> RunSpec:
    fields = dict(
        data=DataSpec(tasks=TASKS3),
        arch=ArchSpec(),
        train=TrainSpec(steps=100),
        finetune=TrainSpec(steps=10),
        method=MethodSpec(name="magnitude"),
        target_sparsity=0.9,
        seed=0,
    )
    fields.update(overrides)
    return RunSpec(**fields)


def test_canonical_form_of_a_cell_is_exactly_the_non_default_semantic_fields():
    cell = _cell()
    assert canonical_json(semantic_dump(cell)) == (
        '{"data":{"tasks":["segment_semantic","normal","depth_zbuffer"]},"finetune":{"steps":10},'
        '"method":{"name":"magnitude"},"schema_version":2,"seed":0,"stage":"cell",'
        '"target_sparsity":0.9,"train":{"steps":100}}'
    )


def test_pinned_hashes():
    # Changing any of these invalidates every stored result: do it only with a SCHEMA_VERSION bump.
    # Version 2 (one CPU thread, flushed denormals, seeded RNGs, divergence rules) replaced the version-1
    # hashes aad16f2352701cf1, e4b3dd70de411d39, 0c7dc6b4d0ab6204, d5bd576980282adb, e50b8a37dbe31493.
    assert _cell().run_id == "64f28b95f8ee4078"
    assert _cell(target_sparsity=0.5).run_id == "07d4324f59038a5b"
    assert _cell(method=MethodSpec(name="magnitude", params={"scope": "layer"})).run_id == "071fecd7ad0f7433"
    assert _cell().dense().run_id == "18ee35c323aa9ebf"
    assert tiny_matrix().expand()[0].run_id == "e29b2dd407e6a45c"


def test_hash_is_sha256_prefix_of_canonical_json():
    import hashlib

    cell = _cell()
    expected = hashlib.sha256(canonical_json(semantic_dump(cell)).encode()).hexdigest()[:16]
    assert cell.run_id == expected and len(cell.run_id) == 16


def test_non_semantic_fields_do_not_change_identity():
    base = _cell()
    assert _cell(data=DataSpec(tasks=TASKS3, root="/somewhere/else")).run_id == base.run_id
    assert _cell(eval=EvalSpec(batch_size=64)).run_id == base.run_id
    on_disk = _cell(data=DataSpec(tasks=TASKS3, source="disk", root="/data/nyu"))
    assert on_disk.run_id != base.run_id  # synthetic vs real data is semantic


def test_explicit_default_equals_omitted_default():
    assert _cell(method=MethodSpec(name="magnitude", params={"scope": "global"})).run_id == _cell().run_id
    assert _cell(arch=ArchSpec(width=1.0)).run_id == _cell().run_id
    assert _cell(train=TrainSpec(steps=100, lr=1e-3)).run_id == _cell().run_id


def test_semantic_changes_change_identity():
    ids = {
        _cell().run_id,
        _cell(seed=1).run_id,
        _cell(train=TrainSpec(steps=101)).run_id,
        _cell(arch=ArchSpec(width=0.5)).run_id,
        _cell(data=DataSpec(tasks=["segment_semantic", "normal"])).run_id,
        _cell(data=DataSpec(tasks=TASKS3, synthetic=SyntheticSpec(seed=3))).run_id,
        _cell(method=MethodSpec(name="random")).run_id,
    }
    assert len(ids) == 7


def test_dense_stage_is_shared_across_methods_and_sparsities():
    matrix = tiny_matrix()
    cells = matrix.expand()
    assert len(cells) == 4 and len({c.run_id for c in cells}) == 4
    assert {c.dense().run_id for c in cells} == {matrix.dense_stages()[0].run_id}
    assert len(matrix.dense_stages()) == 1
    two_seeds = tiny_matrix(seeds=[0, 1])
    assert len(two_seeds.dense_stages()) == 2
    # The finetune budget is not part of the dense model.
    other_ft = tiny_matrix(finetune={"steps": 7, "batch_size": 4})
    assert other_ft.dense_stages()[0].run_id == matrix.dense_stages()[0].run_id


def test_expand_order_is_deterministic_and_follows_the_config():
    matrix = tiny_matrix(seeds=[1, 0])
    order = [(c.seed, c.method.name, c.target_sparsity) for c in matrix.expand()]
    assert order == [
        (1, "random", 0.5), (1, "random", 0.9), (1, "magnitude", 0.5), (1, "magnitude", 0.9),
        (0, "random", 0.5), (0, "random", 0.9), (0, "magnitude", 0.5), (0, "magnitude", 0.9),
    ]  # fmt: skip
    assert [c.run_id for c in matrix.expand()] == [c.run_id for c in tiny_matrix(seeds=[1, 0]).expand()]


def _model_defaults(model: type[BaseModel]) -> dict:
    out = {}
    for name, info in model.model_fields.items():
        if info.is_required():
            out[name] = "<required>"
        else:
            value = info.get_default(call_default_factory=True)
            out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.loads(json.dumps(out, default=list))


def test_defaults_are_frozen_by_snapshot():
    """Omitted defaults are part of identity: changing one must be deliberate (see bench/spec/identity.py):
    keep the old behaviour, bump the method's ``revision`` (its cells alone get new run ids), or bump
    ``SCHEMA_VERSION`` (every run id changes); then update tests/data/spec_defaults.json."""
    models = [DataSpec, SyntheticSpec, ArchSpec, TrainSpec, EvalSpec, MethodSpec, RunSpec, DenseSpec]
    current = {m.__name__: _model_defaults(m) for m in models}
    from mtlprune.registry import METHODS

    for name, cls in METHODS.items():
        current[f"method:{name}"] = {**_model_defaults(cls.Params), "(revision)": cls.revision}
    snapshot = json.loads(SNAPSHOT.read_text())
    for key, defaults in snapshot.items():
        assert current.get(key) == defaults, (
            f"defaults of {key} changed; keep them or bump a revision (method, protocol) or SCHEMA_VERSION"
        )


def test_a_method_revision_enters_its_run_ids_only():
    """A method at revision 1 hashes as before; above 1 its cells get their own run ids, and a config (or a
    spec dump) naming another revision than the method's is refused."""
    plain = tiny_matrix(methods=[{"name": "magnitude"}, {"name": "disparse-static"}], sparsities=[0.5])
    magnitude, static = plain.expand()
    assert "revision" not in semantic_dump(magnitude.method)  # revision 1: the default, omitted
    assert semantic_dump(static.method)["revision"] == 2
    assert (
        magnitude.run_id == tiny_matrix(methods=[{"name": "magnitude"}], sparsities=[0.5]).expand()[0].run_id
    )
    with pytest.raises(ConfigError, match=r"revision: 1, but method 'disparse-static' is at revision 2"):
        tiny_matrix(methods=[{"name": "disparse-static", "revision": 1}], sparsities=[0.5])
    assert (
        tiny_matrix(methods=[{"name": "disparse-static", "revision": 2}], sparsities=[0.5]).expand()[0].run_id
        == static.run_id
    )


# ------------------------------------------------------- errors name the key, value and what is allowed


def _error(data: dict) -> str:
    from mtlprune.spec import parse_matrix

    with pytest.raises(ConfigError) as info:
        parse_matrix(data, "cfg.yaml")
    return str(info.value)


def test_unknown_key_suggests_the_close_match():
    data = tiny_matrix_dict()
    data["spasities"] = data.pop("sparsities")
    message = _error(data)
    assert "cfg.yaml" in message and "'spasities'" in message and "did you mean 'sparsities'" in message


def test_unknown_method_names_close_matches():
    message = _error(tiny_matrix_dict(methods=[{"name": "magnitud"}]))
    assert "methods[0]" in message and "unknown method 'magnitud'" in message
    assert "did you mean 'magnitude'" in message and "'random'" in message


def test_bad_method_param_names_key_path_value_and_allowed():
    message = _error(tiny_matrix_dict(methods=[{"name": "magnitude", "params": {"scope": "glob"}}]))
    assert "methods[0]" in message and "params.scope" in message and "'glob'" in message
    assert "'global'" in message and "'layer'" in message


def test_out_of_range_sparsity_and_unknown_task_and_arch():
    assert "sparsities[1]" in _error(tiny_matrix_dict(sparsities=[0.5, 1.5]))
    assert "(got 1.5)" in _error(tiny_matrix_dict(sparsities=[0.5, 1.5]))
    data = tiny_matrix_dict()
    data["datasets"][0]["tasks"] = ["segment_semantic", "normals"]
    message = _error(data)
    assert "datasets[0]" in message and "'normals'" in message and "did you mean 'normal'" in message
    message = _error(tiny_matrix_dict(archs=[{"name": "deeplab_resnet"}]))
    assert "archs[0].name" in message and "did you mean 'deeplab_resnet34'" in message


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_matrix(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_matrix(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_matrix(listy)


def test_yaml_is_read_with_safe_load(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_matrix(evil)


def test_demo_config_is_valid():
    matrix = load_matrix(Path(__file__).parents[2] / "configs" / "demo.yaml")
    assert isinstance(matrix, MatrixSpec)
    assert [m.name for m in matrix.methods][:2] == ["random", "magnitude"]
    cells = matrix.expand()
    assert matrix.sparsities == [0.5, 0.7, 0.9] and len(cells) == 3 * len(matrix.methods) + 1
    assert (cells[-1].method.name, cells[-1].target_sparsity) == ("dense-finetune", 0.0)  # the control row
    assert isinstance(matrix.dense_stages()[0], DenseSpec)


def test_task_weights_must_name_trained_tasks():
    message = _error(tiny_matrix_dict(train={"steps": 2, "task_weights": {"keypoints2d": 1.0}}))
    assert "train.task_weights names ['keypoints2d']" in message and "segment_semantic" in message


def test_pretrained_identity_is_the_file_content_not_its_path(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-1")
    c.write_bytes(b"weights-2")
    import hashlib

    arch_a = ArchSpec(pretrained=str(a))
    assert arch_a.pretrained_sha256 == hashlib.sha256(b"weights-1").hexdigest()
    assert _cell(arch=arch_a).run_id == _cell(arch=ArchSpec(pretrained=str(b))).run_id
    assert _cell(arch=arch_a).run_id != _cell(arch=ArchSpec(pretrained=str(c))).run_id
    assert _cell(arch=arch_a).run_id != _cell().run_id


def test_pretrained_file_must_exist_and_match_its_digest(tmp_path):
    data = tiny_matrix_dict(archs=[{"name": "deeplab_resnet34", "pretrained": str(tmp_path / "none.pt")}])
    assert "none.pt is not a file" in _error(data)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    data = tiny_matrix_dict(archs=[{"pretrained": str(weights), "pretrained_sha256": "00" * 32}])
    assert "the config expects 0000" in _error(data)


def test_taskonomy_demo_config_is_valid():
    matrix = load_matrix(Path(__file__).parents[2] / "configs" / "demo_taskonomy.yaml")
    assert matrix.datasets[0].dataset == "taskonomy" and len(matrix.datasets[0].tasks) == 5
    assert len(matrix.expand()) == 6 + 1  # the methods × sparsities, then the control row


def test_the_adapmtl_protocol_revision_enters_its_run_ids_only():
    """`adapmtl` is at revision 2 (the reference's input side): its stages get their own run ids, the
    `standard` protocol's keep theirs (revision 1, omitted)."""
    standard = tiny_matrix().expand()[0]
    adapmtl = tiny_matrix(eval={"protocol": "adapmtl"}).expand()[0]
    assert "protocol_revision" not in semantic_dump(standard.eval)
    assert semantic_dump(adapmtl.eval) == {"protocol": "adapmtl", "protocol_revision": 2}
    with pytest.raises(ConfigError, match=r"protocol_revision: 1, but protocol 'adapmtl' is at revision 2"):
        tiny_matrix(eval={"protocol": "adapmtl", "protocol_revision": 1})
