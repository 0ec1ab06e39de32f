"""Regenerate the pictures of docs/analysis.md (docs/img/*.png) from a fake store; needs no torch.

    python tools/make_docs_images.py            # writes docs/img/
    python tools/make_docs_images.py --out DIR  # elsewhere

The store is tests/fake_store.py's (the runner's exact layout, made-up numbers): 2 architectures × 3 seeds
× 6 methods × 3 targets with one failed and one missing cell, masks stored. Figures use the paper style at
150 dpi and the report screenshot is taken with headless Chromium (Debian package ``chromium``); every PNG
is quantised to a 256-colour palette so each stays well under 150 KB in the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from mtlprune.analysis import (  # noqa: E402
    friedman_test,
    load_masks,
    load_published,
    load_results,
    load_task_masks,
    overlap_matrix,
    seed_intervals,
    task_iou,
)
from mtlprune.analysis.curves import load_log  # noqa: E402
from mtlprune.analysis.dense_results import load_dense  # noqa: E402
from mtlprune.analysis.figures import (  # noqa: E402
    delta_vs_sparsity,
    figure_bytes,
    metrics_vs_sparsity,
    sparsity_allocation,
    training_curves,
    training_overview,
)
from mtlprune.analysis.mask_figures import layer_sparsity_heatmap, overlap_heatmap, task_iou_curve  # noqa: E402
from mtlprune.analysis.report import build_report  # noqa: E402
from mtlprune.analysis.stats_figures import cd_diagram, interval_plot  # noqa: E402
from mtlprune.analysis.style import STYLES, StyleMap  # noqa: E402
from tests.fake_store import build_fake_store, write_config  # noqa: E402

METHODS = ("magnitude", "random", "gmp(frequency=10)", "snip", "adapmtl", "disparse-static")
DOCS_STYLE = dataclasses.replace(STYLES["paper"], dpi=150)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
]


def write_png(png: bytes, path: Path, width: int | None = None) -> None:
    """A palette PNG (optionally scaled down to ``width`` px): small enough for the repository."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if width is not None and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    path.write_bytes(buffer.getvalue())
    print(f"{path} ({len(buffer.getvalue()) // 1024} KB, {image.width}×{image.height})")


def screenshot(html: Path, path: Path, profile: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium not installed (Debian package chromium): no report screenshot")
    raw = profile / "shot.png"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1500"]
    subprocess.run(
        [*command, f"--screenshot={raw}", html.as_uri()], check=True, capture_output=True, timeout=120
    )
    write_png(raw.read_bytes(), path, width=900)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        build_fake_store(
            root,
            methods=METHODS,
            targets=(0.5, 0.7, 0.9),
            seeds=(0, 1, 2),
            failed=[25],
            missing=[40],
            masks=True,
        )
        frame, published = load_results(root), load_published()
        dense = load_dense(root, frame["dense_run_id"])
        styles = StyleMap(frame["method"])
        done = frame[frame["status"] == "done"]
        top = done[
            (done["arch"] == "deeplab_resnet34") & (done["target_sparsity"] == 0.9) & (done["seed"] == 0)
        ]
        run = {m: top.loc[top["method"] == m, "run_id"].iloc[0] for m in top["method"]}
        figures = {
            "metrics_vs_sparsity": metrics_vs_sparsity(frame, dense, styles=styles, style=DOCS_STYLE),
            "delta_vs_sparsity": delta_vs_sparsity(frame, published, styles=styles, style=DOCS_STYLE),
            "sparsity_allocation": sparsity_allocation(frame, styles=styles, style=DOCS_STYLE),
            "training_curves": training_curves(
                load_log(root, run["adapmtl"]), style=DOCS_STYLE, title="adapmtl"
            ),
            "training_overview": training_overview(
                {m: load_log(root, r) for m, r in run.items()}, styles=styles, style=DOCS_STYLE
            ),
            "layer_sparsity_heatmap": layer_sparsity_heatmap(
                load_masks(root, run["adapmtl"]), title="adapmtl"
            ),
            "task_iou_curve": task_iou_curve(task_iou(load_task_masks(root, run["disparse-static"]))),
            "overlap_heatmap": overlap_heatmap(overlap_matrix(root, top, 0.9)),
            "cd_diagram": cd_diagram(friedman_test(frame), styles=styles, style=DOCS_STYLE),
            "seed_intervals": interval_plot(seed_intervals(frame), styles=styles, style=DOCS_STYLE),
        }
        for name, fig in figures.items():
            write_png(figure_bytes(fig, "png", DOCS_STYLE), args.out / f"{name}.png")
        config = write_config(Path(tmp) / "fake.yaml", "fake")
        outcome = build_report(config, store=root, out=Path(tmp) / "report", style="screen")
        screenshot(outcome.html, args.out / "report.png", Path(tmp) / "profile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
