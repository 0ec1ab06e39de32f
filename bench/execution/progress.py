"""What a matrix run shows while it works: two bars on a terminal, timestamped lines anywhere else.

One bar (or line) for the matrix — stages done of all, with an ETA from measured stage times
(mtlprune.plan.estimate: the same model as `mtlprune plan`'s estimate) — and one for the stage in hand (step
and loss, fed by the engine's Progress callback). Slurm logs and CI are not terminals: there bars would be
garbage, so the same events become one line per stage start/finish and one every ``every_steps`` steps.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from mtlprune.plan.estimate import EtaModel, format_duration


class Reporter:
    """The silent reporter; the others override what they show. All hooks are cheap and never raise."""

    def __init__(self) -> None:
        self.total = self.done = self.failed = 0
        self.eta = EtaModel()
        self.running: dict[str, str] = {}  # run_id -> label

    def start(self, total: int, already_done: int, eta: EtaModel, already_failed: int = 0) -> None:
        self.total, self.done, self.failed, self.eta = total, already_done, already_failed, eta

    def stage_started(self, run_id: str, kind: str, label: str, total_steps: int | None = None) -> None:
        self.running[run_id] = label

    def step(self, step: int, record: dict[str, Any]) -> None:
        pass

    def stage_finished(
        self, run_id: str, kind: str, label: str, status: str, wall_s: float | None, error: str | None = None
    ) -> None:
        self.running.pop(run_id, None)
        if status == "done":
            self.done += 1
        else:
            self.failed += 1
        self.eta.finished(run_id, wall_s if status == "done" else None)

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def counts(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done + self.failed}/{self.total}{failed}, ETA {format_duration(self.eta.eta_s())}"


def _step_text(step: int, record: dict[str, Any], total: int | None) -> str:
    of = f"/{total}" if total else ""
    loss = record.get("loss")
    loss_text = f" loss {loss:.4f}" if isinstance(loss, int | float) else ""
    return f"{record.get('phase', '')} step {step + 1}{of}{loss_text}".strip()


class LineReporter(Reporter):
    """Plain timestamped lines (Slurm logs, CI, pipes)."""

    def __init__(self, stream: IO[str] | None = None, every_steps: int = 50) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.every_steps = max(1, every_steps)
        self._stage: tuple[str, str, int | None] | None = None  # (run_id, label, total steps)
        self._started: dict[str, float] = {}

    def _print(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def start(self, total: int, already_done: int, eta: EtaModel, already_failed: int = 0) -> None:
        super().start(total, already_done, eta, already_failed)
        failed = f", {already_failed} failed before (not retried)" if already_failed else ""
        eta_text = format_duration(eta.eta_s())
        self._print(f"matrix: {total} stage(s), {already_done} already done{failed}, ETA {eta_text}")

    def stage_started(self, run_id: str, kind: str, label: str, total_steps: int | None = None) -> None:
        super().stage_started(run_id, kind, label, total_steps)
        self._stage = (run_id, label, total_steps)
        self._started[run_id] = time.time()
        self._print(f"start {kind} {run_id} {label}")

    def step(self, step: int, record: dict[str, Any]) -> None:
        if self._stage is not None and (step + 1) % self.every_steps == 0:
            run_id, _, total = self._stage
            self._print(
                f"  {run_id} {_step_text(step, record, total if record.get('phase') == 'dense' else None)}"
            )

    def stage_finished(
        self, run_id: str, kind: str, label: str, status: str, wall_s: float | None, error: str | None = None
    ) -> None:
        super().stage_finished(run_id, kind, label, status, wall_s, error)
        started = self._started.pop(run_id, None)
        took = wall_s if wall_s is not None else (time.time() - started if started else None)
        what = "done  " if status == "done" else "FAILED"
        why = f": {error}" if error else ""
        counts = f" [{self.counts()}]" if self.total else ""  # a lone Slurm task has no matrix to count
        self._print(f"{what} {kind} {run_id} {label} in {format_duration(took)}{why}{counts}")

    def note(self, text: str) -> None:
        self._print(text)


class BarReporter(Reporter):
    """Two tqdm bars on a terminal: the matrix and the stage in hand."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.stream = stream if stream is not None else sys.stderr
        self.matrix_bar: Any = None
        self.stage_bar: Any = None
        self._stage_total: int | None = None

    def start(self, total: int, already_done: int, eta: EtaModel, already_failed: int = 0) -> None:
        super().start(total, already_done, eta, already_failed)
        fmt = "{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed{postfix}"  # postfix comes with ", "
        self.matrix_bar = self._tqdm(
            total=total, initial=already_done + already_failed, desc="matrix", unit="stage", position=0,
            bar_format=fmt, file=self.stream, dynamic_ncols=True,
        )  # fmt: skip
        self.stage_bar = self._tqdm(
            total=None, desc="waiting", position=1, leave=False, file=self.stream, dynamic_ncols=True,
            mininterval=0.5,
        )  # fmt: skip
        self._postfix()

    def _postfix(self) -> None:
        if self.matrix_bar is not None:
            failed = f"{self.failed} failed, " if self.failed else ""
            self.matrix_bar.set_postfix_str(f"{failed}ETA {format_duration(self.eta.eta_s())}")

    def stage_started(self, run_id: str, kind: str, label: str, total_steps: int | None = None) -> None:
        super().stage_started(run_id, kind, label, total_steps)
        if self.stage_bar is None:
            return
        self._stage_total = total_steps
        if len(self.running) > 1:  # a pool: name what runs, steps are not followed
            self.stage_bar.reset(total=None)
            self.stage_bar.set_description_str(
                f"{len(self.running)} running: {', '.join(self.running.values())}"
            )
            return
        self.stage_bar.reset(total=total_steps)
        self.stage_bar.set_description_str(f"{kind} {run_id[:8]} {label}")

    def step(self, step: int, record: dict[str, Any]) -> None:
        if self.stage_bar is None:
            return
        total = self._stage_total if record.get("phase") == "dense" else None
        if self.stage_bar.total != total:
            self.stage_bar.reset(total=total)
        self.stage_bar.n = step + 1
        self.stage_bar.set_postfix_str(_step_text(step, record, None), refresh=False)
        self.stage_bar.refresh()

    def stage_finished(
        self, run_id: str, kind: str, label: str, status: str, wall_s: float | None, error: str | None = None
    ) -> None:
        super().stage_finished(run_id, kind, label, status, wall_s, error)
        if self.matrix_bar is None:
            return
        if status != "done":
            self.matrix_bar.write(f"FAILED {kind} {run_id} {label}: {error}", file=self.stream)
        self.matrix_bar.update(1)
        self._postfix()
        if self.running:
            self.stage_bar.set_description_str(
                f"{len(self.running)} running: {', '.join(self.running.values())}"
            )

    def note(self, text: str) -> None:
        if self.matrix_bar is not None:
            self.matrix_bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        for bar in (self.stage_bar, self.matrix_bar):
            if bar is not None:
                bar.close()
        self.stage_bar = self.matrix_bar = None


def make_reporter(show: bool, stream: IO[str] | None = None) -> Reporter:
    """Bars when ``stream`` (default stderr) is a terminal, lines otherwise, nothing when not ``show``."""
    if not show:
        return Reporter()
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return BarReporter(stream) if callable(isatty) and isatty() else LineReporter(stream)
