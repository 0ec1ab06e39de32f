"""How long the pending stages of a plan will take, from the wall times of stages already finished.

`mtlprune plan` prints this so a user can decide between a laptop, one GPU box and a Slurm array before
starting. A pending stage is estimated by the mean ``wall_s`` of finished stages with the same key (same
kind, dataset, arch, width and budget/method); without one, by the mean of finished stages of the same
kind on the same (dataset, arch, width), with a note; otherwise it has no measurement and is counted as
such. Pure Python: reads ``result.json`` files only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from mtlprune.store import Store

KINDS = ("dense", "cell")
COARSE_LEN = 3
"""A key's first three items are (dataset, arch, width): the fallback match."""


@dataclass(frozen=True)
class StageKey:
    """One stage of a plan with the key its wall time is expected to depend on.

    ``key`` is e.g. (dataset, arch, width, train steps) for a dense stage and (dataset, arch, width,
    method label, finetune steps) for a cell; its first three items are the fallback match.
    """

    run_id: str
    kind: str
    key: tuple[Hashable, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id:
            raise ValueError(f"StageKey.run_id must be a non-empty string, got {self.run_id!r}")
        if self.kind not in KINDS:
            raise ValueError(f"StageKey {self.run_id}: kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.key, tuple) or len(self.key) < COARSE_LEN:
            raise ValueError(
                f"StageKey {self.run_id}: key must be a tuple starting with (dataset, arch, width), "
                f"got {self.key!r}"
            )

    @property
    def coarse(self) -> tuple[str, tuple[Hashable, ...]]:
        return self.kind, self.key[:COARSE_LEN]


@dataclass(frozen=True)
class CostEstimate:
    """What remains of a plan and how long it is expected to take.

    ``per_stage`` maps each pending run id to its estimate in seconds (None: no measurement);
    ``pending_s`` is their sum over the measured ones; ``fallback`` counts pending stages estimated from
    the coarser (kind, dataset, arch, width) match, explained one line per key in ``notes``.
    """

    done: int
    pending: int
    pending_s: float
    unmeasured: int
    fallback: int
    per_stage: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def line(self) -> str:
        """The one-line summary `mtlprune plan` prints."""
        if self.pending == 0:
            return f"estimate: nothing pending ({self.done} stage(s) done)"
        if self.unmeasured == self.pending:
            return (
                f"estimate: {self.pending} pending stage(s), no finished stage to estimate from yet "
                f"({self.done} done)"
            )
        duration = format_duration(self.pending_s)
        text = f"estimate: {self.pending} pending stage(s) ≈ {duration} from measured stage times"
        if self.unmeasured:
            text += f" ({self.unmeasured} without a measurement)"
        return text

    def wall_line(self, workers: int) -> str | None:
        """With ``workers`` stages side by side: the wall time, stage time / workers (a lower bound: dense
        stages come first, and the last stages may leave workers idle). None when there is nothing to say."""
        if workers <= 1 or self.pending == 0 or self.unmeasured == self.pending:
            return None
        return (
            f"with {workers} workers ≈ {format_duration(self.pending_s / workers)} of wall time "
            "(stage time / workers)"
        )


def format_duration(seconds: float | None) -> str:
    """The one duration format (plan, progress, ETA): ``42 s``, ``12 min``, ``1 h 12 min``, ``2 d 3 h``
    (rounded to the shown unit); ``?`` when unknown (None)."""
    if seconds is None:
        return "?"
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"format_duration: expected finite seconds >= 0, got {seconds!r}")
    if round(seconds) < 60:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} d {hours} h"


def _unique(stages: Iterable[StageKey]) -> list[StageKey]:
    """Stages once each (a plan may list a shared dense stage more than once); conflicting keys are a bug."""
    seen: dict[str, StageKey] = {}
    for stage in stages:
        previous = seen.setdefault(stage.run_id, stage)
        if previous != stage:
            raise ValueError(f"stage {stage.run_id} listed with two keys: {previous} and {stage}")
    return list(seen.values())


def estimate_costs(store_root: str | Path, stages: Iterable[StageKey]) -> CostEstimate:
    """Estimate the pending stages of ``stages`` from the finished ones in the store at ``store_root``."""
    store = Store(store_root)
    stages = _unique(stages)
    exact: dict[tuple[str, tuple[Hashable, ...]], list[float]] = defaultdict(list)
    coarse: dict[tuple[str, tuple[Hashable, ...]], list[float]] = defaultdict(list)
    pending: list[StageKey] = []
    for stage in stages:
        if store.is_done(stage.run_id):
            wall = store.result(stage.run_id).wall_s  # a damaged result fails here, naming its file
            exact[stage.kind, stage.key].append(wall)
            coarse[stage.coarse].append(wall)
        else:
            pending.append(stage)

    per_stage: dict[str, float | None] = {}
    fallback_keys: dict[tuple[str, tuple[Hashable, ...]], int] = {}
    for stage in pending:
        if (stage.kind, stage.key) in exact:
            per_stage[stage.run_id] = fmean(exact[stage.kind, stage.key])
        elif stage.coarse in coarse:
            per_stage[stage.run_id] = fmean(coarse[stage.coarse])
            fallback_keys[stage.kind, stage.key] = fallback_keys.get((stage.kind, stage.key), 0) + 1
        else:
            per_stage[stage.run_id] = None

    notes = []
    for (kind, key), count in fallback_keys.items():
        measured = coarse[kind, key[:COARSE_LEN]]
        notes.append(
            f"{count} pending {kind} stage(s) with key {key}: no finished stage with this key; estimated "
            f"from the mean of {len(measured)} finished {kind} stage(s) of (dataset, arch, width) "
            f"{key[:COARSE_LEN]}"
        )
    estimates = [value for value in per_stage.values() if value is not None]
    return CostEstimate(
        done=len(stages) - len(pending),
        pending=len(pending),
        pending_s=math.fsum(estimates),
        unmeasured=len(per_stage) - len(estimates),
        fallback=sum(fallback_keys.values()),
        per_stage=per_stage,
        notes=notes,
    )
