"""Shared fixtures: a tiny synthetic NYU-v2 root rendered once per session, and the real samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Four real NYU-v2 frames in the AdaShare layout (img/ seg/ normal_mask/ depth/), where a machine has them:
# the folder named by this variable (docs/datasets.md); CI sets it. Tests that need them skip, naming it.
REAL_SAMPLES_VAR = "MTLPRUNE_NYUV2_SAMPLES"
# A checkout of the ECS reference code, sarashoouri/EfficientMTL (the folder holding its Codes/): it has no
# licence, so it is never copied here; tests/methods/test_ecs_reference.py loads it from this variable and
# skips, naming it, where it is unset (docs/methods.md, ECS, "Faithfulness").
ECS_REFERENCE_VAR = "MTLPRUNE_ECS_REF"

torch.set_num_threads(2)


# ------------------------------------------------------------------------------------ the inner loop
# `pytest -m "not slow"` is the inner loop (docs/testing.md): a test that trains a dense stage or a cell
# must be marked slow. Enforced here for stages run in this process: outside a slow test, the stage
# entry points raise and name the marker.
_IN_FAST_TEST = {"active": False}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _IN_FAST_TEST["active"] = item.get_closest_marker("slow") is None


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _IN_FAST_TEST["active"] = False


def _guard(stage_entry):
    def guarded(*args, **kwargs):
        if _IN_FAST_TEST["active"]:
            raise RuntimeError(
                "this test trains a stage: mark it (or its module) @pytest.mark.slow so that "
                '`pytest -m "not slow"` stays the fast inner loop'
            )
        return stage_entry(*args, **kwargs)

    return guarded


def _install_stage_guard() -> None:
    import mtlprune.engine.cell
    import mtlprune.engine.dense

    for module, name in ((mtlprune.engine.dense, "_run_dense"), (mtlprune.engine.cell, "_run_cell")):
        setattr(module, name, _guard(getattr(module, name)))


_install_stage_guard()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from mtlprune.datasets.synthetic import write_nyuv2

    return write_nyuv2(
        tmp_path_factory.mktemp("synth") / "nyu", n_train=8, n_test=4, height=32, width=40, seed=0
    )


@pytest.fixture(scope="session")
def real_nyuv2_root(tmp_path_factory) -> Path:
    """The four real AdaShare-format samples with a listing written beside them (skip where absent)."""
    folder = os.environ.get(REAL_SAMPLES_VAR)
    if not folder or not Path(folder, "img").is_dir():
        pytest.skip(
            f"real NYU-v2 samples not available: set {REAL_SAMPLES_VAR} to a folder with img/ seg/ "
            f"normal_mask/ depth/ (got {folder!r})"
        )
    REAL_SAMPLES = Path(folder)
    root = tmp_path_factory.mktemp("real") / "nyu"
    root.mkdir()
    for sub in ("img", "seg", "normal_mask", "depth"):
        (root / sub).symlink_to(REAL_SAMPLES / sub, target_is_directory=True)
    ids = sorted(p.stem for p in (REAL_SAMPLES / "img").glob("*.png"))
    entries = [[f"img/{i}.png", f"seg/{i}.png", f"normal_mask/{i}.png", f"depth/{i}.npy"] for i in ids]
    (root / "nyu_v2_3task.json").write_text(json.dumps({"train": entries[:3], "test": entries[3:]}))
    return root


@pytest.fixture(scope="session")
def ecs_reference_root() -> Path:
    """The root of a checkout of the ECS reference code (skip where ``MTLPRUNE_ECS_REF`` names none)."""
    folder = os.environ.get(ECS_REFERENCE_VAR)
    if not folder or not Path(folder, "Codes", "multimae").is_dir():
        pytest.skip(
            f"ECS reference code not available: set {ECS_REFERENCE_VAR} to a checkout of "
            f"sarashoouri/EfficientMTL, the folder holding Codes/ (got {folder!r})"
        )
    return Path(folder)
