"""The report's figures: per setting, metrics and ΔT/Δm vs sparsity and the sparsity allocation; for one
illustrative run per method, training curves and mask analytics."""

from __future__ import annotations

import pandas as pd

from mtlprune.analysis.report.builder import MAX_RUN_FIGURES, Builder, slug
from mtlprune.analysis.report.collect import ReportData


def _pick_runs(done: pd.DataFrame) -> pd.DataFrame:
    """One run per method to illustrate single-run views: highest target, lowest seed, first setting."""
    if done.empty:
        return done
    first = done.sort_values(["dataset", "tasks", "arch"]).iloc[0]
    same = done[
        (done["dataset"] == first["dataset"])
        & (done["tasks"] == first["tasks"])
        & (done["arch"] == first["arch"])
    ]
    top = same[same["target_sparsity"] == same["target_sparsity"].max()]
    return top.sort_values(["method", "seed"]).drop_duplicates("method")


def figure_sections(data: ReportData, builder: Builder) -> None:
    """Draws the per-setting comparison figures, then the single-run ones for one run per method."""
    from mtlprune.analysis import figures as F
    from mtlprune.analysis.curves import component_sparsity_columns, load_log, threshold_columns
    from mtlprune.analysis.labels import setting_title
    from mtlprune.analysis.style import StyleMap
    from mtlprune.vocabulary import dataset_title, task_name

    frame, style = data.frame, builder.style
    styles = StyleMap(str(m) for m in frame["method"].dropna().unique())
    done = frame[frame["status"] == "done"]
    for dataset, tasks in frame[["dataset", "tasks"]].drop_duplicates().itertuples(index=False):
        part = frame[(frame["dataset"] == dataset) & (frame["tasks"] == tasks)]
        key = slug(dataset, len(str(tasks).split(",")), "tasks")
        where = f"{dataset_title(dataset)} ({', '.join(task_name(t) for t in str(tasks).split(','))})"
        group = f"Results: {where}"
        builder.figure(
            group,
            f"metrics_{key}",
            f"main metric of each task vs achieved sparsity, mean ± std over seeds; dashed: dense, {where}",
            lambda part=part: F.metrics_vs_sparsity(part, data.dense, styles=styles, style=style),
        )
        hollow = (
            "; hollow markers: the published numbers of the same setting (their paper's protocol), at their "
            "real sparsity where it is known (results/published/README.md)"
            if F.published_points(part, data.published)
            else ""
        )
        builder.figure(
            group,
            f"delta_{key}",
            "ΔT and Δm vs achieved sparsity against the dense model and ΔT against the control (the dense "
            f"model finetuned on the same budget, unpruned, at sparsity 0){hollow}, {where}",
            lambda part=part: F.delta_vs_sparsity(part, data.published, styles=styles, style=style),
        )
        builder.figure(
            group,
            f"cost_{key}",
            "ΔT against stored parameters and against FLOPs per image, every method on the same axes (a "
            "multi-model method such as ECS stores base, non-zero deltas and heads; the grey cross is the "
            f"dense model), {where}",
            lambda part=part: F.delta_vs_cost(part, styles=styles, style=style),
        )
        if "delta_m_stl" in part and part["delta_m_stl"].notna().any():
            builder.figure(
                group,
                f"cost_stl_{key}",
                "Δm against the single-task models (ECS's framing) vs stored parameters and FLOPs, every "
                f"method on the same axes, {where}",
                lambda part=part: F.delta_vs_cost(part, delta="delta_m_stl", styles=styles, style=style),
            )
        builder.figure(
            group,
            f"allocation_{key}",
            f"sparsity of the backbone and of each task head per method and target, {where}",
            lambda part=part: F.sparsity_allocation(part, styles=styles, style=style),
        )
        builder.figure(
            group,
            f"metrics_all_{key}",
            f"every metric of the vocabulary vs achieved sparsity, {where}",
            lambda part=part: F.metrics_vs_sparsity(
                part, data.dense, metrics="all", styles=styles, style=style
            ),
        )
    picked = _pick_runs(done)
    if picked.empty:
        builder.notes.append("no training curves or mask figures: no finished cell")
        return
    first = picked.iloc[0]
    target = f"target {100 * float(first['target_sparsity']):g}%"
    setting = f"{setting_title(str(first['dataset']), str(first['arch']))} · {target}"
    logs: dict[str, pd.DataFrame] = {}
    for row in picked.itertuples(index=False):
        try:
            logs[str(row.method)] = load_log(data.store, str(row.run_id))
        except (FileNotFoundError, ValueError) as exc:
            builder.notes.append(f"training log of {row.method} ({row.run_id}) not shown: {exc}")
    group = "Training"
    if logs:
        builder.figure(
            group,
            "training_overview",
            f"total training loss and sparsity while training, one run per method, {setting}",
            lambda: F.training_overview(logs, styles=styles, style=style),
        )
    # Detailed curves for the methods that log per-component sparsity or thresholds (AdapMTL's family).
    detailed = [m for m, log in logs.items() if component_sparsity_columns(log) or threshold_columns(log)]
    for method in detailed[:MAX_RUN_FIGURES]:
        run_id = picked.loc[picked["method"] == method, "run_id"].iloc[0]
        builder.figure(
            group,
            f"curves_{slug(method)}",
            f"{method} ({run_id}): loss per task, overall and per-component sparsity, thresholds, {setting}",
            lambda method=method: F.training_curves(logs[method], style=style, title=f"{method} · {setting}"),
        )
    mask_figure_sections(data, builder, picked, setting)


def mask_figure_sections(data: ReportData, builder: Builder, picked: pd.DataFrame, setting: str) -> None:
    """Per-layer sparsity, method overlap and cross-task IoU, where the illustrated runs stored masks."""
    from mtlprune.analysis import load_masks, load_task_masks, overlap_matrix, task_iou
    from mtlprune.analysis.load import on_pruning_axis
    from mtlprune.analysis.mask_figures import layer_sparsity_heatmap, overlap_heatmap, task_iou_curve

    runs = data.store / "runs"
    picked = on_pruning_axis(picked)  # a delta-axis run (ECS) stores delta masks: not a pruned network's
    with_masks = picked[[(runs / r / "masks.npz").is_file() for r in picked["run_id"]]]
    if with_masks.empty:
        builder.notes.append("no mask figures: the illustrated runs stored no masks.npz")
        return
    group = "Masks"
    for row in with_masks.head(MAX_RUN_FIGURES).itertuples(index=False):
        builder.figure(
            group,
            f"layers_{slug(row.method)}",
            f"per-layer sparsity of {row.method} ({row.run_id}), {setting}",
            lambda row=row: layer_sparsity_heatmap(
                load_masks(data.store, row.run_id), title=f"{row.method} · {setting}"
            ),
        )
    if len(with_masks) > 1:
        first = with_masks.iloc[0]
        builder.figure(
            group,
            "overlap",
            f"Jaccard of the kept weights between methods, {setting}, seed {first['seed']}",
            lambda: overlap_heatmap(
                overlap_matrix(
                    data.store,
                    with_masks,
                    float(first["target_sparsity"]),
                    dataset=first["dataset"],
                    arch=first["arch"],
                    seed=first["seed"],
                )
            ),
        )
    per_task = [
        r for r in with_masks.itertuples(index=False) if (runs / r.run_id / "task_masks.npz").is_file()
    ]
    for row in per_task[:MAX_RUN_FIGURES]:
        builder.figure(
            group,
            f"task_iou_{slug(row.method)}",
            f"IoU of the tasks' own keep-masks over the backbone, {row.method} ({row.run_id}), {setting}",
            lambda row=row: task_iou_curve(task_iou(load_task_masks(data.store, row.run_id))),
        )
