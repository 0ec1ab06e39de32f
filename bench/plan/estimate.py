"""How long pending stages will take, from the wall times of stages already finished: the one model behind
`mtlprune plan`'s estimate and the ETA a run shows.

A pending stage is estimated by the mean ``wall_s`` of finished stages with the same cost key (same kind,
dataset, arch, width and budget/method: `Stage.cost_key`); without one, by the mean of finished stages of the
same kind on the same (dataset, arch, width), with a note; otherwise it has no measurement and is counted as
such. Pure Python: reads ``result.json`` files only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Protocol

from mtlprune.store import Store

COARSE_LEN = 3
"""A cost key's first three items are (dataset, arch, width): the fallback match."""


class Priced(Protocol):
    """What the estimate needs of a stage (mtlprune.plan.stages.Stage has it)."""

    @property
    def run_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def cost_key(self) -> tuple[Hashable, ...]: ...


Key = tuple[str, tuple[Hashable, ...]]


class StageTimes:
    """Measured wall times by (kind, cost key) and by (kind, dataset, arch, width)."""

    def __init__(self) -> None:
        self.exact: dict[Key, list[float]] = defaultdict(list)
        self.coarse: dict[Key, list[float]] = defaultdict(list)

    def add(self, stage: Priced, wall_s: float) -> None:
        self.exact[stage.kind, stage.cost_key].append(float(wall_s))
        self.coarse[stage.kind, stage.cost_key[:COARSE_LEN]].append(float(wall_s))

    def estimate(self, stage: Priced) -> float | None:
        """The mean time of the finished stages with its key, else with its (kind, dataset, arch, width), else
        None."""
        for times in (self.exact.get((stage.kind, stage.cost_key)), self.coarse.get(_coarse(stage))):
            if times:
                return fmean(times)
        return None

    def is_fallback(self, stage: Priced) -> bool:
        return not self.exact.get((stage.kind, stage.cost_key)) and bool(self.coarse.get(_coarse(stage)))


def _coarse(stage: Priced) -> Key:
    return stage.kind, stage.cost_key[:COARSE_LEN]


class EtaModel:
    """A run's remaining time: the estimates of its pending stages, summed, over the parallel workers. Each
    stage that finishes adds its time to the measurements. Unknown (None) while a pending stage has nothing to
    be estimated from."""

    def __init__(
        self, pending: Iterable[Priced] = (), times: StageTimes | None = None, parallel: int = 1
    ) -> None:
        self.pending = {stage.run_id: stage for stage in pending}
        self.times = times or StageTimes()
        self.parallel = max(1, parallel)

    def finished(self, run_id: str, wall_s: float | None) -> None:
        """A stage of the run ended (``wall_s`` None: it failed, and its time says nothing)."""
        stage = self.pending.pop(run_id, None)
        if stage is not None and wall_s is not None:
            self.times.add(stage, wall_s)

    def eta_s(self) -> float | None:
        estimates = [self.times.estimate(stage) for stage in self.pending.values()]
        if any(e is None for e in estimates):
            return None
        return math.fsum(e for e in estimates if e is not None) / self.parallel


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


def _unique(stages: Iterable[Priced]) -> list[Priced]:
    """Stages once each (a plan may list a shared dense stage more than once); conflicting keys are a bug."""
    seen: dict[str, Priced] = {}
    for stage in stages:
        previous = seen.setdefault(stage.run_id, stage)
        if (previous.kind, previous.cost_key) != (stage.kind, stage.cost_key):
            raise ValueError(
                f"stage {stage.run_id} listed with two keys: {previous.cost_key} and {stage.cost_key}"
            )
    return list(seen.values())


def measured_times(store: Store, stages: Iterable[Priced]) -> tuple[StageTimes, list[Priced]]:
    """The wall times of the finished ones of ``stages``, and the pending ones (a damaged result is pending:
    the next run recomputes it)."""
    times, pending = StageTimes(), []
    for stage in stages:
        state = store.inspect(stage.run_id)
        if state.result is None:
            pending.append(stage)
        else:
            times.add(stage, state.result.wall_s)
    return times, pending


def estimate_costs(
    store_root: str | Path, stages: Iterable[Priced], unknown: Iterable[str] = ()
) -> CostEstimate:
    """Estimate the pending stages of ``stages`` from the finished ones in the store at ``store_root``.

    ``unknown``: run ids that cannot be looked up (their data's identity is not known yet): pending.
    """
    stages, unknown = _unique(stages), set(unknown)
    times, pending = measured_times(Store(store_root), [s for s in stages if s.run_id not in unknown])
    pending += [s for s in stages if s.run_id in unknown]
    per_stage = {stage.run_id: times.estimate(stage) for stage in pending}
    fallback_keys: dict[Key, int] = defaultdict(int)
    for stage in pending:
        if times.is_fallback(stage):
            fallback_keys[stage.kind, stage.cost_key] += 1
    notes = []
    for (kind, key), count in fallback_keys.items():
        measured = times.coarse[kind, key[:COARSE_LEN]]
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
