"""`pip install .` gives one import package, `mtlprune`, and a `mtlprune` command that work from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mtlprune

ROOT = Path(__file__).resolve().parents[1]


def test_import_mtlprune_is_torch_free_and_exports_the_plugin_api():
    code = (
        "import sys, mtlprune; assert 'torch' not in sys.modules, 'import mtlprune pulled in torch'; "
        "from mtlprune import PruningMethod, METHODS, MethodContext; "
        "from mtlprune.methods.base import PruningMethod as P; "
        "from mtlprune.engine.context import MethodContext as C; "
        "from mtlprune.registry import METHODS as M; "
        "assert (PruningMethod, METHODS, MethodContext) == (P, M, C)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mtlprune.nothing  # noqa: B018


@pytest.mark.slow
def test_the_wheel_installs_one_package_and_a_command_that_runs_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {
        "mtlprune",
        next(t for t in top if t.endswith(".dist-info")),
    }  # no top-level datasets/methods
    for expected in (
        "mtlprune/cli.py",
        "mtlprune/methods/magnitude.py",
        "mtlprune/datasets/nyuv2.py",
        "mtlprune/published/adapmtl_table2.csv",
    ):
        assert expected in names, expected
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "mtlprune = mtlprune.cli:main" in entry_points

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import mtlprune, pathlib; from mtlprune.analysis import load_published; "
        "print(pathlib.Path(mtlprune.__file__).parent.parent); print(len(load_published()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    from mtlprune.analysis import load_published

    assert Path(out[0]) == target  # the installed copy, not the working tree
    assert int(out[1]) == len(load_published()) > 0  # with its published numbers
    for command in ([str(target / "bin" / "mtlprune")], [sys.executable, "-m", "mtlprune"]):
        listed = subprocess.run(
            [*command, "methods"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )
        assert listed.returncode == 0, listed.stderr
        assert "magnitude" in listed.stdout and "adapmtl" in listed.stdout
