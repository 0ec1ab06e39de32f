"""Regenerate the pictures of docs/analysis.md (docs/img/*.png) from a fake store; needs no torch.

    python tools/make_docs_images.py            # writes docs/img/
    python tools/make_docs_images.py --out DIR  # elsewhere

The store is tests/fake_store.py's (the runner's exact layout, made-up numbers): 2 architectures × 3 seeds
× 6 methods × 3 targets with one failed and one missing cell, masks stored. Figures use the paper style at
150 dpi and the report screenshot is taken with headless Chromium (Debian package ``chromium``);
``paper_page.png`` is a two-column LaTeX page (pdflatex, TeX Live's base packages) with a generated
figure and tables as a paper would include them, rendered with pypdfium2. Every PNG is quantised to a
256-colour palette so each stays well under 150 KB in the repository.
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
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
    delta_vs_cost,
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


PAPER_PAGE = r"""\documentclass[twocolumn,10pt]{article}
\usepackage[letterpaper,margin=0.75in,columnsep=0.3in]{geometry}
\usepackage{booktabs}
\usepackage{graphicx}
\pagestyle{empty}
\begin{document}
\section{Results}
Figure~\ref{fig:delta} plots $\Delta_T$ against the sparsity each method reached, with the dense model
as the dashed line at zero and the published numbers of AdapMTL's Table~2 as hollow markers in the
method's colour. Every number, name and unit comes from the benchmark's report: the figure is the PDF that
\texttt{mtlprune report} writes, included at the column width, and the tables are its \texttt{.tex}
output, input unchanged. Table~\ref{tab:comparison} fits one column; Table~\ref{tab:table2} spans both
(a \texttt{table*} float, which \LaTeX{} places at the top of the next page, shrunk to the text width).
\begin{figure}[t]
\centering
\includegraphics[width=\columnwidth]{%(figure)s}
\caption{$\Delta_T$ against achieved sparsity on NYU-v2 with MobileNetV2, mean $\pm$ std over three
seeds (made-up numbers of the test store).}
\label{fig:delta}
\end{figure}
%(comparison)s
%(table2)s
The comparison table gives the main metric of each task with its standard deviation over seeds; bold and
underlined values are the best and second best of each block of rows, compared as displayed.
\end{document}
"""
PAGE_DPI = 110


def paper_page(
    frame: pd.DataFrame, published: pd.DataFrame, styles: StyleMap, work: Path, path: Path
) -> None:
    """A two-column paper page with a report figure and two report tables, compiled and rendered."""
    from mtlprune.analysis.figures import save_figure
    from mtlprune.analysis.tables import comparison_table, table2_latex, table2_layout, to_latex

    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        raise SystemExit("pdflatex not installed (texlive-latex-base): no paper page")
    import pypdfium2

    work.mkdir(parents=True, exist_ok=True)
    mbv2 = frame[frame["arch"] == "mobilenetv2"]
    fig = delta_vs_sparsity(mbv2, published, deltas=("delta_t",), styles=styles, style="paper")
    save_figure(fig, work / "delta", style="paper", formats=("pdf",))
    main = comparison_table(
        mbv2,
        metrics=["segment_semantic.miou", "normal.mean", "depth_zbuffer.abs_err", "delta_t"],
    )
    comparison = to_latex(
        main, caption="Main metrics on NYU-v2, MobileNetV2", label="tab:comparison", legend=False
    )
    table2 = table2_latex(
        table2_layout(frame, "nyuv2", "mobilenetv2", 0.9, published=published),
        caption="Every metric at 90% sparsity on NYU-v2, MobileNetV2 (layout of AdapMTL's Table 2)",
        label="tab:table2",
        legend=False,
    )
    source = PAPER_PAGE % {"table2": table2, "figure": "delta.pdf", "comparison": comparison}
    (work / "page.tex").write_text(source, encoding="utf-8")
    for _ in range(2):  # twice: references
        proc = subprocess.run(
            [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "page.tex"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise SystemExit(f"pdflatex failed on {work / 'page.tex'}:\n{proc.stdout[-2000:]}")
    pdf = pypdfium2.PdfDocument(str(work / "page.pdf"))
    write_png(_png(pdf[0].render(scale=PAGE_DPI / 72).to_pil()), path)  # the figure and the 1-column table
    # the next page begins with the table* float: its ink, at a resolution that keeps 5-pt text legible
    top = pdf[1].render(scale=2 * PAGE_DPI / 72).to_pil().convert("RGB")
    ink = np.asarray(top.convert("L")) < 200
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    gap = rows[1:] - rows[:-1]  # the float ends at the first tall white band below it
    end = rows[np.argmax(gap > 2 * PAGE_DPI)] if (gap > 2 * PAGE_DPI).any() else rows[-1]
    box = (int(columns[0]) - 20, int(rows[0]) - 20, int(columns[-1]) + 20, int(end) + 20)
    write_png(_png(top.crop(box)), path.with_name(path.stem + "_table2.png"), width=1100)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
            "delta_vs_cost": delta_vs_cost(frame, styles=styles, style=DOCS_STYLE),
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
        paper_page(frame, published, styles, Path(tmp) / "paper", args.out / "paper_page.png")
        config = write_config(Path(tmp) / "fake.yaml", "fake")
        outcome = build_report(config, store=root, out=Path(tmp) / "report", style="screen")
        screenshot(outcome.html, args.out / "report.png", Path(tmp) / "profile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
