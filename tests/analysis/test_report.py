"""Paper figures, `mtlprune report` and its HTML page, on a fake store in the runner's exact layout.

The store (tests/fake_store.py) has 2 architectures × 2 seeds × 6 methods × 2 targets on NYU-v2 with one
failed, one running and one missing (planned, never started) cell. Figures are checked through
matplotlib's objects (labels, legend texts, plotted values, marker faces, colours); the report is built
once through the CLI in a subprocess that must not import torch, then read as files and in Chromium.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from PIL import Image

from mtlprune.analysis import load_published, load_results
from mtlprune.analysis.curves import load_log, read_log
from mtlprune.analysis.dense_results import load_dense
from mtlprune.analysis.figures import (
    SparseFigureWarning,
    delta_vs_cost,
    delta_vs_sparsity,
    metrics_vs_sparsity,
    published_points,
    save_figure,
    sparsity_allocation,
    training_curves,
    training_overview,
)
from mtlprune.analysis.html import markdown_table_html
from mtlprune.analysis.report import collect, resolve_source
from mtlprune.analysis.style import DENSE_COLOR, PALETTE, ROSTER, MethodStyle, StyleMap
from mtlprune.cli import main
from mtlprune.store.manifest import read_manifest, save_manifest, write_manifest
from tests.fake_store import DENSE_METRICS, build_fake_store, write_config

REPO = Path(__file__).resolve().parents[2]
METHODS = ("magnitude", "random", "gmp(frequency=10)", "adapmtl", "disparse-static", "snip")
ARCHS = ("deeplab_resnet34", "mobilenetv2")
# Cell index = ((arch * 2 + seed) * 6 + method) * 2 + target (runner order).
FAILED, RUNNING, MISSING = (
    2,
    13,
    30,
)  # resnet/seed 0/random/0.5, resnet/seed 1/magnitude/0.9, mbv2/0/adapmtl/0.5
CHROMIUM_SKIP = "chromium not installed (Debian package chromium)"
PDFLATEX_SKIP = "pdflatex not installed (Debian packages texlive-latex-base, texlive-latex-recommended)"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "store"
    return build_fake_store(
        root,
        methods=METHODS,
        targets=(0.5, 0.9),
        failed=[FAILED],
        running=[RUNNING],
        missing=[MISSING],
        masks=True,
    )


@pytest.fixture(scope="module")
def frame(fake):
    return load_results(fake.root)


@pytest.fixture(scope="module")
def dense(fake, frame):
    return load_dense(fake.root, frame["dense_run_id"])


@pytest.fixture(scope="module")
def report(fake, tmp_path_factory):
    """`mtlprune report CONFIG --store ... --style screen` in a fresh interpreter, torch-free."""
    out = tmp_path_factory.mktemp("out") / "report"
    config = write_config(tmp_path_factory.mktemp("cfg") / "fake.yaml", fake.name)
    code = (
        "import sys; from mtlprune.cli import main; rc = main(sys.argv[1:]); "
        "print('TORCH:', sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))); "
        "sys.exit(rc)"
    )
    argv = ["report", str(config), "--store", str(fake.root), "--out", str(out), "--style", "screen"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True)
    return proc, out


# ------------------------------------------------------------------------------------------ styles


def test_roster_methods_keep_their_style_whatever_else_is_plotted():
    alone = StyleMap(["adapmtl"])
    crowded = StyleMap(["adapmtl", "snip", "random", "my-plugin", "gmp(frequency=10)", "zzz"])
    assert alone["adapmtl"] == crowded["adapmtl"] == MethodStyle("#CC6677", "D")  # roster slot 3: rose
    assert StyleMap(["magnitude"])["magnitude"] == MethodStyle("#332288", "o")  # roster slot 0: indigo


def test_colours_are_distinct_colour_blind_safe_and_never_black_or_grey():
    # The reported collision: random and a plugin in the same colour, close to the dense line's grey.
    styles = StyleMap(["magnitude", "random", "my-plugin"])
    colours = [styles[m].color for m in ("magnitude", "random", "my-plugin")]
    assert len(set(colours)) == 3 and set(colours) <= set(PALETTE)
    assert not {"#000000", "black", DENSE_COLOR} & set(PALETTE)
    # Up to nine methods, nine colours; beyond, (colour, marker) pairs stay distinct and bars get hatches.
    nine = StyleMap(ROSTER[:9])
    assert len({nine[m].color for m in ROSTER[:9]}) == 9 and {nine[m].hatch for m in ROSTER[:9]} == {""}
    full = StyleMap(ROSTER)
    shared = [m for m in ROSTER if sum(full[o].color == full[m].color for o in ROSTER) > 1]
    assert len({(full[m].color, full[m].hatch) for m in ROSTER}) == len(ROSTER)
    assert shared and all(full[m].hatch for m in shared if m in ROSTER[9:])


def test_styles_are_distinct_within_a_map():
    labels = [*ROSTER, *(f"gmp(frequency={k})" for k in range(10)), "plugin-a", "plugin-b"]
    styles = StyleMap(labels)
    pairs = {(styles[lab].color, styles[lab].marker) for lab in labels}
    assert len(pairs) == len(labels)


def test_a_variant_takes_its_method_slot_and_published_names_fall_back_to_it():
    styles = StyleMap(["lth(rate=0.9)", "snip"])
    assert styles["lth(rate=0.9)"] == StyleMap(["lth"])["lth"]
    assert styles["lth"] == styles["lth(rate=0.9)"]  # a published "lth" row is drawn in the run's colour


def test_hashed_slots_do_not_depend_on_the_python_hash_seed():
    code = (
        "from mtlprune.analysis.style import StyleMap; "
        "s = StyleMap(['my-plugin', 'x(a=1)']); print(s['my-plugin'], s['x(a=1)'])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


# ----------------------------------------------------------------------------------------- figures


def test_metrics_figure_facets_labels_legend_and_dense_line(frame, dense):
    fig = metrics_vs_sparsity(frame, dense, style="screen")
    axes = np.array(fig.axes).reshape(3, 2)
    assert [ax.get_title() for ax in axes[0]] == ["NYU-v2 · Deeplab-ResNet34", "NYU-v2 · MobileNetV2"]
    labels = ["Seg mIoU (%) ↑", "Normal Mean (°) ↓", "Depth Abs err (m) ↓"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == labels
    assert [ax.get_xlabel() for ax in axes[-1]] == ["Sparsity (%)"] * 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [*sorted(METHODS), "dense"]
    for col, arch in enumerate(ARCHS):  # mIoU in %, like the tables
        (line,) = [ln for ln in axes[0][col].get_lines() if ln.get_label() == "dense"]
        miou = 100 * DENSE_METRICS[arch]["segment_semantic.miou"]
        assert list(line.get_ydata()) == pytest.approx([miou] * 2)
        ticks = axes[-1][col].get_xticks()
        assert all(t == round(t) and round(t) % 5 == 0 for t in ticks)  # round percentages


def test_metrics_figure_plots_the_mean_of_the_finished_seeds(frame, dense):
    fig = metrics_vs_sparsity(frame, dense, style="screen")
    ax = fig.axes[0]  # seg mIoU, deeplab_resnet34
    done = frame[(frame["status"] == "done") & (frame["arch"] == "deeplab_resnet34")]
    (adapmtl,) = [ln for ln in ax.get_lines() if ln.get_label() == "adapmtl"]
    cells = done[done["method"] == "adapmtl"].sort_values("target_sparsity")
    expected = cells.groupby("target_sparsity")["segment_semantic.miou"].mean()
    assert list(adapmtl.get_xdata()) == [50.0, 90.0]  # achieved sparsity in %
    assert list(adapmtl.get_ydata()) == pytest.approx(list(100 * expected))
    # random at 0.5 failed in seed 0: its point is seed 1 alone, not a mean with a missing value.
    (random_line,) = [ln for ln in ax.get_lines() if ln.get_label() == "random"]
    seed1 = done[(done["method"] == "random") & (done["target_sparsity"] == 0.5)]
    assert len(seed1) == 1 and random_line.get_ydata()[0] == pytest.approx(
        100 * seed1["segment_semantic.miou"].iloc[0]
    )


def test_a_seed_with_a_nan_metric_makes_the_point_a_gap_not_a_partial_mean():
    rows = pd.DataFrame(
        {
            "status": "done",
            "dataset": "nyuv2",
            "tasks": "segment_semantic",
            "arch": "a",
            "method": "m",
            "target_sparsity": [0.5, 0.5, 0.9, 0.9],
            "achieved_sparsity": [0.5, 0.5, 0.9, 0.9],
            "seed": [0, 1, 0, 1],
            "segment_semantic.miou": [0.2, 0.4, 0.1, math.nan],
        }
    )
    with pytest.warns(SparseFigureWarning, match="metrics vs sparsity: only 1 point"):  # 0.9 is a gap
        fig = metrics_vs_sparsity(rows, style="screen")
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "m"]
    assert line.get_ydata()[0] == pytest.approx(30.0) and math.isnan(line.get_ydata()[1])


def test_delta_figure_shows_published_points_hollow_in_the_method_colour(frame):
    styles = StyleMap(frame["method"])
    fig = delta_vs_sparsity(frame, load_published(), styles=styles, style="screen")
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["ΔT vs dense (%) ↑", "Δm vs dense (%) ↑"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*sorted(METHODS), "dense", "published: adapmtl table2"]
    hollow = [ln for ln in axes[0][1].get_lines() if ln.get_markerfacecolor() == "none"]
    # AdapMTL Table 2 (MobileNetV2, 3 tasks, 90%) prints ΔT for adapmtl (+2.66) and snip (−9.99).
    points = {(ln.get_markeredgecolor(), float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in hollow}
    assert points == {(styles["adapmtl"].color, 90.0, 2.66), (styles["snip"].color, 90.0, -9.99)}
    assert not [
        ln for ln in axes[0][0].get_lines() if ln.get_markerfacecolor() == "none"
    ]  # no 3-task ResNet table
    assert published_points(frame, load_published()) == 2  # the report's caption mentions them
    assert published_points(frame[frame["arch"] == "deeplab_resnet34"], load_published()) == 0


def test_delta_vs_cost_puts_every_method_on_stored_parameters_and_flops():
    rows = pd.DataFrame(
        {
            "status": "done",
            "dataset": "nyuv2",
            "tasks": "segment_semantic",
            "arch": "a",
            "method": ["m", "m", "ecs", "ecs"],
            "target_sparsity": [0.5, 0.9, 0.5, 0.9],
            "achieved_sparsity": [0.5, 0.9, math.nan, math.nan],
            "seed": 0,
            "delta_t": [-1.0, -5.0, 2.0, 1.0],
            "params_nonzero": [2.0e6, 0.4e6, 3.0e6, 3.0e6],
            "params_stored": [math.nan, math.nan, 5.5e6, 4.6e6],  # base + non-zero deltas + heads
            "params_total": 4.0e6,
            "flops_sparse": [3e9, 1e9, 8e9, 8e9],
            "flops_dense": 8e9,
        }
    )
    fig = delta_vs_cost(rows, style="screen")  # no flops_input_sparse in these rows: that axis is left out
    params, flops = fig.axes
    lines = {ln.get_label(): ln for ln in params.get_lines()}
    assert list(lines["m"].get_xdata()) == pytest.approx([0.4, 2.0])  # M, sorted by cost
    assert list(lines["m"].get_ydata()) == [-5.0, -1.0]
    assert list(lines["ecs"].get_xdata()) == pytest.approx([4.6, 5.5])  # params_stored wins where present
    assert list(lines["dense"].get_xdata()) == [4.0] and list(lines["dense"].get_ydata()) == [0.0]
    assert params.get_xlabel() == "Stored parameters (M)" and flops.get_xlabel() == "FLOPs per image (G)"
    assert list({ln.get_label(): ln for ln in flops.get_lines()}["m"].get_xdata()) == [1.0, 3.0]
    with pytest.raises(ValueError, match="unknown cost axis \\['latency'\\]"):
        delta_vs_cost(rows, costs=("latency",))


def test_delta_axis_rows_stay_off_the_sparsity_axis_and_on_the_cost_axis(frame):
    ecs = frame[(frame["method"] == "snip") & (frame["status"] == "done")].assign(
        method="ecs", sparsity_axis="delta", params_stored=1e6
    )
    both = pd.concat([frame, ecs], ignore_index=True)
    sparsity_fig = metrics_vs_sparsity(both, style="screen")
    assert "ecs" not in [t.get_text() for t in sparsity_fig.legends[0].get_texts()]
    cost_fig = delta_vs_cost(both, costs=("params",), style="screen")
    assert "ecs" in [t.get_text() for t in cost_fig.legends[0].get_texts()]


def test_allocation_bars_are_the_component_sparsities(frame):
    fig = sparsity_allocation(frame, style="screen")
    assert len(fig.axes) == 4  # 2 archs × 2 targets
    ax = fig.axes[1]  # deeplab_resnet34, target 0.9
    assert ax.get_title() == "Target 90%"
    assert fig.axes[0].get_ylabel() == "NYU-v2 · Deeplab-ResNet34\nSparsity of component (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["backbone", "Seg", "Normal", "Depth"]
    (target,) = [ln for ln in ax.get_lines() if ln.get_label() == "target"]
    assert list(target.get_ydata()) == [90.0, 90.0]
    cells = frame[(frame["arch"] == "deeplab_resnet34") & (frame["target_sparsity"] == 0.9)]
    cells = cells[(cells["method"] == "adapmtl") & (cells["status"] == "done")]
    columns = [
        "sparsity.backbone",
        *(f"sparsity.head.{t}" for t in ("segment_semantic", "normal", "depth_zbuffer")),
    ]
    (bars,) = [c for c in ax.containers if c.get_label() == "adapmtl"]
    assert [b.get_height() for b in bars] == pytest.approx(list(100 * cells[columns].mean()))


def test_one_method_has_one_colour_and_marker_in_every_figure(frame, dense, fake):
    figures = [
        metrics_vs_sparsity(frame, dense, style="screen"),
        delta_vs_sparsity(frame, style="screen"),
        sparsity_allocation(frame, style="screen"),
    ]
    for method in METHODS:
        seen = set()
        for fig in figures:
            (handle,) = [h for h in fig.legends[0].legend_handles if h.get_label() == method]
            if isinstance(handle, Line2D):
                seen.add((to_hex(handle.get_color()), handle.get_marker()))
            else:  # a bar's legend patch: its colour (bars have no marker)
                seen.add((to_hex(handle.get_facecolor()), StyleMap(METHODS)[method].marker))
        seen.add((to_hex(StyleMap(METHODS)[method].color), StyleMap(METHODS)[method].marker))
        assert len(seen) == 1, method
    logs = {
        m: load_log(fake.root, frame[(frame.method == m) & (frame.status == "done")].run_id.iloc[0])
        for m in METHODS
    }
    overview = training_overview(logs, style="screen")
    colours = {h.get_label(): h.get_color() for h in overview.legends[0].legend_handles}
    assert colours == {m: StyleMap(METHODS)[m].color for m in METHODS}


# ------------------------------------------------------------------------------------------ curves


def test_read_log_puts_phases_on_one_step_axis_and_names_a_bad_line(tmp_path):
    records = [
        {"phase": "train", "step": 0, "loss": 3.0},
        {"phase": "train", "step": 10, "loss": 2.0},
        {"phase": "prune", "gmp.sparsity": 0.5},
        {"phase": "finetune", "step": 0, "loss": 1.5},
        {"phase": "finetune", "step": 10, "loss": 1.0},
        {"phase": "train", "step": 0, "loss": 0.9},  # a second round of the same phase
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"phase": "fine')  # live, partial tail
    log = read_log(path)
    assert list(log["x"]) == [0, 10, 10, 11, 21, 22]
    path.write_text(json.dumps(records[0]) + "\nnot json\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:2: not a JSON record"):
        read_log(path)


def test_training_curves_panels_and_task_colours(frame, fake):
    run_id = frame[(frame["method"] == "adapmtl") & (frame["status"] == "done")]["run_id"].iloc[0]
    fig = training_curves(load_log(fake.root, run_id), style="screen")
    assert [ax.get_ylabel() for ax in fig.axes] == ["Training loss", "Sparsity (%)", "Threshold"]
    assert fig.axes[-1].get_xlabel() == "Optimizer step (all phases)"
    loss, sparsity, threshold = ([t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes)
    assert loss == ["Depth", "Normal", "Seg", "total"]
    assert sparsity == ["overall", "backbone", "Depth head", "Normal head", "Seg head"]
    assert threshold == ["backbone", "Depth head", "Normal head", "Seg head"]
    colour = {ln.get_label(): ln.get_color() for ax in fig.axes for ln in ax.get_lines()}
    assert colour["Seg"] == colour["Seg head"] and colour["Depth"] == colour["Depth head"]
    magnitude = frame[(frame["method"] == "magnitude") & (frame["status"] == "done")]["run_id"].iloc[0]
    assert [ax.get_ylabel() for ax in training_curves(load_log(fake.root, magnitude)).axes] == [
        "Training loss"
    ]


def test_saved_figures_embed_truetype_and_have_paper_widths(frame, fake, tmp_path):
    run_id = frame[(frame["method"] == "adapmtl") & (frame["status"] == "done")]["run_id"].iloc[0]
    one = save_figure(training_curves(load_log(fake.root, run_id)), tmp_path / "one")
    two = save_figure(sparsity_allocation(frame), tmp_path / "two")
    assert [p.name for p in one] == ["one.pdf", "one.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.pdf",
        "one.png",
        "two.pdf",
        "two.png",
    ]  # no temp
    pdf = one[0].read_bytes()
    assert pdf.startswith(b"%PDF-") and b"/FontFile2" in pdf and b"/Type3" not in pdf
    assert Image.open(one[1]).size[0] == round(3.3 * 300)  # one column, 300 dpi
    assert Image.open(two[1]).size[0] == round(7.0 * 300)  # two columns


# ---------------------------------------------------------------------------------------- manifest


def test_manifest_round_trip_of_a_real_matrix(tmp_path):
    from tests.helpers import tiny_matrix

    matrix = tiny_matrix()
    path = write_manifest(matrix, tmp_path)
    assert path == tmp_path / "tiny" / "matrix.json"
    manifest = read_manifest(tmp_path, "tiny")
    cells = matrix.expand()
    assert manifest.cell_ids == [c.run_id for c in cells]
    assert [(c.method, c.target, c.dense_run_id) for c in manifest.cells] == [
        (c.method.label, c.target_sparsity, c.dense().run_id) for c in cells
    ]
    assert [d.run_id for d in manifest.dense] == [d.run_id for d in matrix.dense_stages()]
    assert manifest.spec == matrix.model_dump(mode="json")
    assert {"commit", "packages", "hostname", "written"} <= set(manifest.provenance)


def test_a_damaged_manifest_is_named_with_the_key(tmp_path):
    payload = {"format": 1, "name": "m", "spec": {}, "dense": [], "cells": [{"run_id": "x"}]}
    with pytest.raises(
        ValueError, match=r"<payload>: not a valid manifest \(cells\.0\.dataset: Field required"
    ):
        save_manifest(tmp_path, payload)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "matrix.json").write_text(json.dumps({**payload, "cells": "oops"}))
    with pytest.raises(
        ValueError, match=r"m/matrix\.json: not a valid manifest \(cells: Input should be a valid list"
    ):
        read_manifest(tmp_path, "m")
    (tmp_path / "m" / "matrix.json").write_text(json.dumps({**payload, "cells": [], "format": 2}))
    with pytest.raises(
        ValueError, match=r"m/matrix\.json: manifest format 2, but this mtlprune reads formats 1\.\.1"
    ):
        read_manifest(tmp_path, "m")


# ------------------------------------------------------------------------------------------ report


def test_report_cli_exits_0_and_never_imports_torch(report):
    proc, out = report
    assert proc.returncode == 0, proc.stderr
    assert "TORCH: []" in proc.stdout
    assert "cells: 45 done, 1 failed, 1 running, 1 missing" in proc.stdout
    assert (out / "report.html").is_file()


def test_report_lists_failed_running_and_missing_cells_with_their_errors(report, fake):
    _, out = report
    page = (out / "report.html").read_text(encoding="utf-8")
    failed, running, missing = (fake.cells[i]["run_id"] for i in (FAILED, RUNNING, MISSING))
    attention = page[
        page.index('id="attention-table"') : page.index("</table>", page.index('id="attention-table"'))
    ]
    for run_id, status in ((failed, "failed"), (running, "running"), (missing, "missing")):
        assert re.search(
            rf'<tr class="{status}"><td class="l">{status}</td><td class="l">{run_id}</td>', attention
        )
    assert "fake failure 2" in attention and "never started" in attention
    assert "Traceback ..." in attention  # the failed cell's traceback, from its status.json


def test_report_tables_mark_the_failed_cell_in_markdown_latex_and_html(report):
    _, out = report
    markdown = (out / "tables" / "comparison.md").read_text(encoding="utf-8")
    (row,) = [line for line in markdown.splitlines() if line.startswith("| Deeplab-ResNet34 | 50% | random")]
    assert "(n=1 of 2)[^1]" in row
    assert re.search(
        r"^\[\^1\]: random, Deeplab-ResNet34, 50%: 1 of 2 seeds failed: .*fake failure 2", markdown, re.M
    )
    assert "random (n=1 of 2)" in (out / "tables" / "comparison.tex").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '<td class="l">random (n=1 of 2)<sup class="fn">1</sup></td>' in page
    names = sorted(p.name for p in (out / "tables").iterdir())
    assert "table2_nyuv2_mobilenetv2_3_tasks_0.9.tex" in names and "comparison_all_metrics.md" in names
    assert "sparsity_misses.md" not in names  # every fake cell lands on its target


def test_report_lists_the_cells_that_miss_their_target_sparsity(tmp_path):
    """A faithful AdapMTL cell whose two seeds end at 91.72% and 93.38% for a 90% target (hand: mean
    92.55%, +2.55 pp): the report writes the achieved-against-target table, places it after the comparison
    tables, and the main table's caption names the row; the magnitude cells (exactly 90%) are not listed."""
    from mtlprune.analysis.report.builder import Builder
    from mtlprune.analysis.report.table_sections import table_sections
    from mtlprune.store import Store

    fake = build_fake_store(
        tmp_path / "store",
        archs=("mobilenetv2",),
        methods=("magnitude", "adapmtl(control=faithful)"),
        targets=(0.9,),
        logs=False,
    )
    store = Store(fake.root)
    faithful = [c["run_id"] for c in fake.cells if c["method"] == "adapmtl(control=faithful)"]
    for run_id, achieved in zip(faithful, (0.9172, 0.9338), strict=True):
        result = store.result(run_id)
        sparsity = {**result.sparsity, "achieved_sparsity": achieved}
        store.write_result(run_id, result.model_copy(update={"sparsity": sparsity}))
    data = collect(*resolve_source(fake.root))
    builder = Builder(tmp_path / "out", "paper")
    shown = table_sections(data, builder)
    titles = list(shown)
    assert titles[2] == (
        f"Achieved against target sparsity, {data.title.removeprefix('Report: ')}: cells that miss the "
        "target by more than 0.1 pp"
    )
    assert titles[:2] == [t for t in titles if t.startswith("Comparison of the methods")]
    lines = (tmp_path / "out" / "tables" / "sparsity_misses.md").read_text(encoding="utf-8").splitlines()
    assert lines[2:] == [
        "| Setting | Method | Target | Achieved | Seed range | Difference (pp) | Seeds |",
        "| :--- | :--- | ---: | ---: | ---: | ---: | ---: |",
        "| NYU-v2 · MobileNetV2 | adapmtl(control=faithful) | 90% | 92.55% | 91.72–93.38 | +2.55 | 2 |",
    ]
    assert (tmp_path / "out" / "tables" / "sparsity_misses.tex").is_file()
    comparison = (tmp_path / "out" / "tables" / "comparison.md").read_text(encoding="utf-8")
    assert (
        "Achieved sparsity (mean over seeds) misses the target by more than 0.1 pp in 1 row: "
        "adapmtl(control=faithful) at 90%: 92.55% (+2.55 pp)." in comparison.splitlines()[0]
    )
    assert "<table id='sparsity_misses'>" in shown[titles[2]] and "91.72–93.38" in shown[titles[2]]
    tables = [tmp_path / "out" / "tables" / f"{name}.tex" for name in ("sparsity_misses", "comparison")]
    assert all(path.read_text(encoding="utf-8").isascii() for path in tables)
    assert r"(+2.55 pp)" in tables[1].read_text(encoding="utf-8")
    (tmp_path / "tex").mkdir()
    log = compile_in_two_column_paper(tables, tmp_path / "tex")
    assert "Overfull \\hbox" not in log


def test_report_page_is_self_contained_with_spec_and_provenance(report, fake):
    _, out = report
    page = (out / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(list((out / "figures").glob("*.png"))) >= 8
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert not re.search(r'(src|href)="https?://', page)  # nothing fetched from outside
    assert "0123456789abcdef0123456789abcdef01234567: 49 stage(s)" in page  # 45 done cells + 4 dense stages
    assert "&quot;sparsities&quot;: [\n    0.5,\n    0.9\n  ]" in page  # the matrix spec
    assert "cuda:0 (NVIDIA H100 80GB HBM3)" in page


def test_a_store_folder_reports_every_run_and_the_planned_missing_ones(fake):
    root, manifests, name = resolve_source(fake.root)
    assert (root, name, [m.name for m in manifests]) == (fake.root, None, ["fake"])
    data = collect(root, manifests, name)
    counts = data.frame["status"].value_counts().to_dict()
    assert counts == {"done": 45, "failed": 1, "running": 1, "missing": 1}
    (missing,) = data.frame[data.frame["status"] == "missing"].itertuples(index=False)
    assert (missing.run_id, missing.method, missing.target_sparsity, missing.seed) == (
        fake.cells[MISSING]["run_id"],
        "adapmtl",
        0.5,
        0,
    )
    assert sorted(data.dense["run_id"]) == sorted(d["run_id"] for d in fake.dense)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "{tmp}/nowhere"], "{tmp}/nowhere: no such config file or result store"),
        (["report", "{tmp}"], "{tmp}: not a result store (no runs/ folder in it)"),
        (["report", "{tmp}/noname.yaml"], "{tmp}/noname.yaml: expected a mapping with a 'name' key"),
        (
            ["report", "{tmp}/other.yaml", "--store", "{store}"],
            "{store}/other/matrix.json: no manifest of matrix 'other'",
        ),
        (["report", "{store}", "--store", "{tmp}"], "is a result store, and --store names another one"),
    ],
)
def test_report_errors_exit_2_naming_the_path(argv, message, fake, tmp_path, capsys):
    (tmp_path / "noname.yaml").write_text("datasets: []\n")
    write_config(tmp_path / "other.yaml", "other")
    fill = {"tmp": str(tmp_path), "store": str(fake.root)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(**fill) in err


def test_an_unknown_style_is_refused_by_the_parser(fake, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(fake.root), "--style", "poster"])
    assert exit_info.value.code == 2 and "invalid choice: 'poster'" in capsys.readouterr().err


def test_every_table_of_the_report_compiles_and_fits_a_two_column_page(report, tmp_path):
    """Each .tex the report writes compiles with booktabs and graphicx; none runs past its column (or, for
    the 20-column Table 2 layouts, past the page: they are table* floats shrunk to the text width)."""
    _, out = report
    tables = sorted((out / "tables").glob("*.tex"))
    assert {p.name.split("_")[0] for p in tables} >= {"comparison", "table2"}
    log = compile_in_two_column_paper(tables, tmp_path)
    assert "Overfull \\hbox" not in log
    pages = int(re.search(r"Output written on doc\.pdf \((\d+) pages?", log)[1])
    assert pages == len(tables)
    for path in tables:
        tex = path.read_text(encoding="utf-8")
        assert tex.isascii(), path  # every name and symbol escaped
        wide = path.name.startswith(("table2_", "comparison_all_metrics"))
        assert tex.startswith("\\begin{table*}[t]" if wide else "\\begin{table}[t]"), path


def test_markdown_tables_become_html_with_bold_underline_notes_and_escapes():
    markdown = (
        "Table: Caption <x>.\n\n| Arch | Method | Val ↑ |\n| :--- | :--- | ---: |\n"
        "| a | m\\|1[^1] | **1.00** |\n| a | <script> | <u>0.50</u> |\n\n[^1]: m failed: boom\n"
    )
    out = markdown_table_html(markdown, table_id="t")
    assert "<caption>Caption &lt;x&gt;.</caption>" in out
    assert '<th class="l">Arch</th><th class="l">Method</th><th>Val ↑</th>' in out
    assert '<td class="l">m|1<sup class="fn">1</sup></td><td><b>1.00</b></td>' in out
    assert '<td class="l">&lt;script&gt;</td><td><u>0.50</u></td>' in out
    assert "<li><sup>1</sup> m failed: boom</li>" in out


# ---------------------------------------------------------------------------------------- chromium


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(CHROMIUM_SKIP)
    _, out = report
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    url = (out / "report.html").as_uri()
    for width in (1400, 1000):  # a laptop and a narrow window: every table fits or scrolls in its box
        dom = subprocess.run(
            [chromium, *flags, f"--window-size={width},900", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        body = re.search(r"<body([^>]*)>", dom)
        assert body is not None, dom[:500]
        attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body[1]))
        assert attrs["tables-overflowing"] == "0" and attrs["page-overflow"] == "0", (width, attrs)
    n_png = len(list((out / "figures").glob("*.png")))
    assert attrs["images-total"] == attrs["images-ok"] == str(n_png)
    assert int(attrs["table-rows"]) > 48  # the comparison table alone has one row per cell group
    assert dom.count('<tr class="failed">') == 1
    # The main comparison comes first: the main-metric table and the ΔT figure, before anything else.
    sections = re.findall(r'<section id="([^"]+)">', dom)
    assert sections[:2] == ["main", "attention"]
    main = dom[dom.index('<section id="main">') : dom.index('<section id="attention">')]
    assert 'id="comparison"' in main or "id='comparison'" in main
    assert 'id="fig-delta_nyuv2_3_tasks"' in main and dom.count('id="fig-delta_nyuv2_3_tasks"') == 1
    # Summaries speak the tables' language too: display names, % instead of fractions.
    auc = dom[dom.index('id="auc"') if 'id="auc"' in dom else dom.index("id='auc'") :]
    assert "<th>Sparsity from (%)</th>" in auc[: auc.index("</thead>")] and "sparsity_min" not in dom
    pareto = dom[dom.index('id="pareto"') if 'id="pareto"' in dom else dom.index("id='pareto'") :]
    assert "<th>Seg mIoU (%) ↑</th>" in pareto[: pareto.index("</thead>")]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1200,900", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert Image.open(shot).size == (1200, 900)


def test_a_long_roster_legend_fits_inside_a_one_column_figure(tmp_path):
    """16 methods with long labels: the legend takes as many columns as fit, and never leaves the figure."""
    from mtlprune.analysis.figures import _legend_cols, _text_width, delta_vs_sparsity

    # 7-pt text → 6-pt legend (DejaVu Sans outside a style): 30 × "x" is 1.480 in wide, plus 3.6 em of
    # handle and spacing (0.3 in): a column takes 1.780 in
    assert _text_width("x" * 30, 6.0) == pytest.approx(1.4797, abs=1e-3)
    assert _legend_cols(["x" * 30], 3.3, 7.0) == 1
    assert _legend_cols(["x" * 30] * 5, 6.9, 7.0) == 3  # 0.97 · 6.9 / 1.780 = 3.76 → 3
    assert _legend_cols(["ab"] * 3, 6.9, 7.0) == 3  # never more columns than entries
    assert _legend_cols([], 3.3, 7.0) == 1
    labels = [f"method-{i}(parameter_{i}=value)" for i in range(16)]
    store = build_fake_store(
        tmp_path / "store", archs=("deeplab_resnet34",), methods=labels, seeds=(0,), logs=False
    )
    fig = delta_vs_sparsity(load_results(store.root), style="paper")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box, (legend,) = fig.get_window_extent(renderer), fig.legends
    inside = legend.get_window_extent(renderer)
    assert box.x0 - 1 <= inside.x0 and inside.x1 <= box.x1 + 1
    assert box.y0 - 1 <= inside.y0
    assert len(legend.get_texts()) >= 16
    # Every one of the 16 series has its own (colour, marker) pair, none of them the dense line's grey.
    series = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() in labels]
    pairs = {ln.get_label(): (to_hex(ln.get_color()), ln.get_marker()) for ln in series}
    assert len(pairs) == 16 and len(set(pairs.values())) == 16
    assert to_hex(DENSE_COLOR) not in {c for c, _ in pairs.values()}
    # Bars have no marker: where 16 methods share nine colours, (colour, hatch) tells them apart.
    bars = sparsity_allocation(load_results(store.root), style="paper").axes[0].containers
    looks = {c.get_label(): (to_hex(c.patches[0].get_facecolor()), c.patches[0].get_hatch()) for c in bars}
    assert len(looks) == 16 and len(set(looks.values())) == 16


def test_all_metrics_is_a_grid_that_fits_a_two_column_page(frame, dense):
    fig = metrics_vs_sparsity(frame[frame["arch"] == "mobilenetv2"], dense, metrics="all", style="paper")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 12  # the NYU-v2 vocabulary: 2 + 5 + 5 metrics
    assert fig.get_figwidth() == 7.0 and fig.get_figheight() < 6.5  # 3 rows × 4, not one column of 12
    titles = ["Seg mIoU (%) ↑", "Seg PixAcc (%) ↑", "Normal Mean (°) ↓"]
    assert [ax.get_title() for ax in visible[:3]] == titles
    assert fig.get_suptitle() == "NYU-v2 · MobileNetV2"
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    (legend,) = fig.legends
    renderer = canvas.get_renderer()
    box, inside = fig.get_window_extent(renderer), legend.get_window_extent(renderer)
    assert box.x0 - 1 <= inside.x0 and inside.x1 <= box.x1 + 1 and box.y0 - 1 <= inside.y0
    assert [t.get_text() for t in legend.get_texts()] == [*sorted(METHODS), "dense"]


def test_a_single_record_is_a_visible_point_and_curves_use_the_logged_step(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in (
                {"phase": "finetune", "step": 0, "loss": 2.0},
                {"phase": "finetune", "step": 4, "loss": 1.0},
                {"phase": "finetune2", "step": 7, "loss": 0.5},  # a phase change, steps continuing
            )
        )
    )
    log = read_log(path)
    assert list(log["x"]) == [0, 4, 7]  # the logged steps, not the record order
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"phase": "finetune", "step": 3, "loss": 1.0}) + "\n")
    fig = training_overview({"magnitude": read_log(one), "snip": log}, style="screen")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert list(lines["snip"].get_xdata()) == [0, 4, 7] and lines["snip"].get_marker() == "None"
    assert list(lines["magnitude"].get_xdata()) == [3]
    assert lines["magnitude"].get_marker() == StyleMap(["magnitude", "snip"])["magnitude"].marker
    assert not fig.texts
    with pytest.warns(SparseFigureWarning, match="training overview: only 1 point"):
        alone = training_overview({"magnitude": read_log(one)}, style="screen")
    assert [t.get_text() for t in alone.texts] == ["training overview: only 1 point(s) to show"]


# -------------------------------------------------------------------------------------- statistics

STATS_METHODS = ("magnitude", "snip", "adapmtl", "lth(rewind_step=10)")


@pytest.fixture(scope="module")
def stats_reports(tmp_path_factory):
    """build_report on stores of 1 and 3 seeds with the dense-finetune control: seeds → (store, outcome)."""
    from mtlprune.analysis.report import build_report

    out = {}
    for n_seeds in (1, 3):
        base = tmp_path_factory.mktemp(f"stats{n_seeds}")
        store = build_fake_store(
            base / "store",
            archs=("mobilenetv2",),
            methods=STATS_METHODS,
            targets=(0.5, 0.9),
            seeds=tuple(range(n_seeds)),
            failed=[1],  # magnitude at 90% in seed 0: one incomplete block
            logs=False,
            control=True,
        )
        out[n_seeds] = (store, build_report(store.root, out=base / "report"))
    return out


def test_control_cells_and_control_run_ids_in_the_fake_store(stats_reports):
    store, _ = stats_reports[3]
    controls = [c for c in store.cells if c["method"] == "dense-finetune"]
    assert [(c["seed"], c["target"]) for c in controls] == [(0, 0.0), (1, 0.0), (2, 0.0)]
    by_seed = {c["seed"]: c["run_id"] for c in controls}
    for cell in store.cells:
        spec = json.loads((store.root / "runs" / cell["run_id"] / "spec.json").read_text())
        if cell["method"] == "dense-finetune":
            assert "control_run_id" not in spec
        else:
            assert spec["control_run_id"] == by_seed[cell["seed"]]
    plain = build_fake_store(store.root.parent / "plain", archs=("mobilenetv2",), seeds=(0,), logs=False)
    spec = json.loads((plain.root / "runs" / plain.cells[0]["run_id"] / "spec.json").read_text())
    assert "control_run_id" not in spec and "dense-finetune" not in {c["method"] for c in plain.cells}


def test_one_seed_report_says_no_significance_is_possible_and_draws_none(stats_reports):
    from mtlprune.analysis.report.stats_section import ONE_SEED

    _, outcome = stats_reports[1]
    page = outcome.html.read_text(encoding="utf-8")
    section = page[page.index('<section id="statistics">') :]
    assert f'<p class="note" id="stats-one-seed">{ONE_SEED}</p>' in section
    assert "no significance statement is possible" in section
    assert not [p for p in outcome.figures if p.name.startswith("stats_")]
    assert not [p for p in outcome.tables if p.name.startswith("stats_")]
    assert not (outcome.out / "figures" / "stats_cd.png").exists()
    assert 'id="fig-stats_cd"' not in page and "id='stats-ranks-descriptive'" in section


def test_three_seed_report_writes_the_cd_figure_and_the_statistics_tables(stats_reports):
    from mtlprune.analysis import friedman_test, load_results

    store, outcome = stats_reports[3]
    names = {p.name for p in outcome.figures + outcome.tables}
    for stem in ("stats_cd", "stats_intervals"):
        assert {f"{stem}.pdf", f"{stem}.png"} <= names
    for stem in ("stats_intervals", "stats_ranks", "stats_pairwise"):
        assert {f"{stem}.md", f"{stem}.tex"} <= names
    result = friedman_test(load_results(store.root))
    assert "dense-finetune" not in result.methods and result.n_dropped == 1 and result.n_blocks == 5
    ranks = (outcome.out / "tables" / "stats_ranks.md").read_text(encoding="utf-8")
    assert f"N = {result.n_blocks} complete block(s), 1 incomplete block(s) left out" in ranks
    assert f"CD = {result.cd:.3f}" in ranks and f"p = {result.p_value:.3f}" in ranks
    best = result.ranks.iloc[0]
    assert f"| {best['method']} | {best['mean_rank']:.2f} |" in ranks
    intervals = (outcome.out / "tables" / "stats_intervals.md").read_text(encoding="utf-8")
    assert "| dense-finetune (control) |" in intervals
    pairwise = (outcome.out / "tables" / "stats_pairwise.md").read_text(encoding="utf-8")
    assert (
        "dense-finetune" not in pairwise and pairwise.count("\n| ") == 1 + 1 + 6
    )  # header, rule, 4·3/2 pairs
    page = outcome.html.read_text(encoding="utf-8")
    section = page[page.index('<section id="statistics">') : page.index('<section id="spec">')]
    assert 'id="fig-stats_cd"' in section and 'id="fig-stats_intervals"' in section
    assert "no significance statement" not in section and "id='stats_pairwise'" in section
    assert "Kendall" in section and "lth(rewind_step=10)" in section
    tex = (outcome.out / "tables" / "stats_pairwise.tex").read_text(encoding="utf-8")
    assert r"lth(rewind\_step=10)" in tex and tex.isascii()


def compile_in_two_column_paper(tables: list[Path], tmp_path: Path) -> str:
    """pdflatex of a two-column article that inputs ``tables``; its log (the test fails when it fails)."""
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip(PDFLATEX_SKIP)
    body = "\n".join(rf"\input{{{p.as_posix()}}}" + "\n\\clearpage" for p in tables)
    (tmp_path / "doc.tex").write_text(
        "\\documentclass[twocolumn]{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        "\\begin{document}\n" + body + "\n\\end{document}\n"
    )
    proc = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").read_bytes().startswith(b"%PDF-")
    return (tmp_path / "doc.log").read_text(encoding="latin-1")


def test_statistics_latex_compiles(stats_reports, tmp_path):
    _, outcome = stats_reports[3]
    tables = sorted(p for p in outcome.tables if p.name.startswith("stats_") and p.suffix == ".tex")
    assert len(tables) == 3
    log = compile_in_two_column_paper(tables, tmp_path)
    assert "Overfull \\hbox" not in log
