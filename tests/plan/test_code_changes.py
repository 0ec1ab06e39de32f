"""A finished cell made by other code of a plugin method is never silently reused.

The plugin's source is hashed into each cell's provenance (``method_code``); `mtlprune run` refuses a matrix
whose finished plugin cells were made by other code, naming the method and both hashes, and recomputes them
with ``--recompute-changed`` (keeping the old result beside the new one). Built-in methods are identified by
the commit and SCHEMA_VERSION bumps instead.
"""

from __future__ import annotations

import hashlib
import sys

import pytest
import yaml

from mtlprune import registry
from mtlprune.cli import main
from mtlprune.execution.matrix import run_matrix
from mtlprune.plan.code_changes import CodeChanged
from mtlprune.store import Store
from mtlprune.store.provenance import code_identity
from tests.helpers import tiny_matrix, tiny_matrix_dict

MODULE = "test_code_changes_plugin"
SOURCE = '''"""A throwaway plugin whose source the test edits."""

from mtlprune.engine.context import MethodContext
from mtlprune.registry import METHODS
from mtlprune.methods.base import PruningMethod


@METHODS.register("test-editable")
class Editable(PruningMethod):
    """Magnitude pruning, then finetune."""

    def run(self, ctx: MethodContext) -> None:
        ctx.apply_masks(ctx.select_masks({n: p.detach().abs() for n, p in ctx.prunable().items()}))
        ctx.finetune()
'''


def _load(folder, source: str) -> type:
    """(Re)load the plugin from ``folder`` with ``source``; the registry forgets the previous version."""
    (folder / f"{MODULE}.py").write_text(source)
    registry.METHODS._items.pop("test-editable", None)
    registry._loaded.discard(MODULE)
    sys.modules.pop(MODULE, None)
    registry.load_plugins([MODULE])
    return registry.METHODS.get("test-editable")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugin"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    registry.METHODS._items.pop("test-editable", None)
    registry._loaded.discard(MODULE)
    sys.modules.pop(MODULE, None)


def test_code_identity_hashes_the_plugin_file_and_marks_builtins(plugin_dir):
    cls = _load(plugin_dir, SOURCE)
    identity = code_identity(cls)
    name = f"{MODULE}.py"
    expected = hashlib.sha256(name.encode() + b"\0" + SOURCE.encode() + b"\0").hexdigest()
    assert identity == {"class": f"{MODULE}.Editable", "builtin": False, "sha256": expected, "files": [name]}
    assert code_identity(registry.METHODS.get("magnitude"))["builtin"] is True


@pytest.mark.slow
def test_changed_plugin_code_is_refused_then_recomputed_on_request(plugin_dir, tmp_path):
    old = code_identity(_load(plugin_dir, SOURCE))["sha256"]
    matrix = tiny_matrix(methods=[{"name": "test-editable"}, {"name": "magnitude"}], sparsities=[0.5])
    store = Store(tmp_path / "store")
    assert run_matrix(matrix, store, show_progress=False).failed == {}
    cell = matrix.expand()[0]
    assert store.result(cell.run_id).provenance["method_code"]["sha256"] == old
    assert run_matrix(matrix, store, show_progress=False).skipped  # same code: reused

    new = code_identity(_load(plugin_dir, SOURCE + "\n# a changed line\n"))["sha256"]
    with pytest.raises(CodeChanged) as refused:
        run_matrix(matrix, store, show_progress=False)
    message = str(refused.value)
    assert (
        f"{cell.run_id}: method 'test-editable' ran with code {old[:12]}, the code is now {new[:12]}"
        in message
    )
    assert "--recompute-changed" in message and "magnitude" not in message  # built-ins are not checked
    assert store.result(cell.run_id).provenance["method_code"]["sha256"] == old  # nothing was touched

    outcome = run_matrix(matrix, store, show_progress=False, recompute_changed=True)
    assert outcome.done == [cell.run_id] and outcome.failed == {}
    assert store.result(cell.run_id).provenance["method_code"]["sha256"] == new
    superseded = store.run_dir(cell.run_id) / f"result.superseded-{old[:12]}.json"
    assert superseded.is_file()


@pytest.mark.slow
def test_bench_run_reports_changed_code_and_exits_2(plugin_dir, tmp_path, capsys):
    config = tmp_path / "m.yaml"
    _load(plugin_dir, SOURCE)
    config.write_text(yaml.safe_dump(tiny_matrix_dict(methods=[{"name": "test-editable"}], sparsities=[0.5])))
    store = str(tmp_path / "store")
    _load(plugin_dir, SOURCE)
    assert main(["run", str(config), "--store", store, "--no-progress", "--plugin", MODULE]) == 0
    _load(plugin_dir, SOURCE.replace("then finetune", "then finetune (edited)"))
    assert main(["run", str(config), "--store", store, "--no-progress", "--plugin", MODULE]) == 2
    assert "method 'test-editable' ran with code" in capsys.readouterr().err
    rerun = ["run", str(config), "--store", store, "--no-progress", "--plugin", MODULE, "--recompute-changed"]
    assert main(rerun) == 0
