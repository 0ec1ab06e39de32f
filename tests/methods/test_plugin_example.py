"""The documented example plugin: the docs print it verbatim, and it loads with --plugin from YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtlprune.analysis import load_results
from mtlprune.cli import main
from tests.helpers import tiny_matrix_dict

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("plugin", ["taylor_example.py", "rounds_example.py"])
def test_docs_print_the_example_plugins_verbatim(plugin):
    doc = (ROOT / "docs" / "adding_a_method.md").read_text()
    code = (ROOT / "tests" / "plugins" / plugin).read_text()
    assert f"```python\n{code}```" in doc


def test_rounds_split_the_budget_exactly():
    from tests.plugins.rounds_example import split_steps

    assert split_steps(10, 3) == [4, 3, 3] and split_steps(2, 3) == [1, 1, 0] and split_steps(7, 1) == [7]
    assert all(sum(split_steps(n, k)) == n for n in range(30) for k in range(1, 12))


@pytest.mark.slow
def test_example_plugin_runs_from_yaml_with_params_through_the_cli(tmp_path, capsys):
    config = tiny_matrix_dict(
        methods=[{"name": "taylor-example", "params": {"batches": 3, "scope": "component"}}], sparsities=[0.6]
    )
    path = tmp_path / "taylor.yaml"
    path.write_text(yaml.safe_dump(config))
    store = tmp_path / "store"
    args = [
        "run",
        str(path),
        "--store",
        str(store),
        "--no-progress",
        "--plugin",
        "tests.plugins.taylor_example",
    ]
    assert main(args) == 0
    row = load_results(store).iloc[0]
    assert row["method"] == "taylor-example(batches=3,scope=component)" and row["status"] == "done"
    assert abs(row["sparsity.backbone"] - 0.6) < 1e-3 and abs(row["sparsity.head.normal"] - 0.6) < 1e-3
    assert "taylor-example" in capsys.readouterr().out
