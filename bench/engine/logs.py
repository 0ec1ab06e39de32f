"""A stage's log: ``log.jsonl`` (one JSON record per logged step or event) and, when asked, TensorBoard."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtlprune.engine.checkpoint import CHECKPOINT, StageCheckpoint
from mtlprune.spec import RuntimeSpec

Progress = Callable[[int, dict[str, float]], None]


class JsonlLogger:
    """Appends one JSON record per `every` steps (and every non-step record) to log.jsonl.

    With ``tensorboard`` the same records also go to TensorBoard event files in ``<run>/tensorboard/``:
    every numeric value as ``<phase>/<key>`` against a step counter that keeps increasing across phases and
    rounds (a method's steps restart at 0 in each ``ctx.train`` call).
    """

    def __init__(
        self, path: Path, every: int, progress: Progress | None = None, tensorboard: bool = False
    ) -> None:
        self.path, self.every, self.progress = path, every, progress
        self.fh = path.open("a", encoding="utf-8")
        self.writer: Any = None
        self.tensorboard = tensorboard
        self.global_step = 0
        if tensorboard:
            self.writer = self._writer(purge_step=None)

    def _writer(self, purge_step: int | None) -> Any:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked

        return SummaryWriter(log_dir=str(self.path.parent / "tensorboard"), purge_step=purge_step)

    def position(self) -> dict[str, int]:
        """Where the log is now (a checkpoint stores it; resuming rewinds to it)."""
        self.fh.flush()
        return {"bytes": self.fh.tell(), "global_step": self.global_step}

    def rewind(self, position: dict[str, int]) -> None:
        """Drop everything logged after ``position``: a resumed stage logs those steps again.

        TensorBoard events are append-only; a new writer with ``purge_step`` makes TensorBoard discard the
        superseded events at and after that step when it reads the directory.
        """
        self.fh.flush()
        self.fh.truncate(position["bytes"])
        self.fh.seek(position["bytes"])
        self.global_step = position["global_step"]
        if self.writer is not None:
            self.writer.close()
            self.writer = self._writer(purge_step=self.global_step)

    def __call__(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if self.progress is not None and step is not None:
            self.progress(step, record)
        if step is not None:
            self.global_step += 1
        if step is None or step % self.every == 0:
            self.fh.write(json.dumps(record, sort_keys=True) + "\n")
            self.fh.flush()
            if self.writer is not None:
                phase = str(record.get("phase", "log"))
                for key, value in record.items():
                    if key not in ("step", "phase") and isinstance(value, int | float):
                        self.writer.add_scalar(f"{phase}/{key}", float(value), self.global_step)

    def close(self) -> None:
        self.fh.close()
        if self.writer is not None:
            self.writer.close()


def open_log(
    run_dir: Path, runtime: RuntimeSpec, progress: Progress | None
) -> tuple[JsonlLogger, StageCheckpoint]:
    """The stage's log and checkpoint; without a checkpoint the stage starts over with a fresh log."""
    if not (run_dir / CHECKPOINT).is_file():
        (run_dir / "log.jsonl").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    logger = JsonlLogger(run_dir / "log.jsonl", runtime.log_every, progress, runtime.tensorboard)
    try:
        return logger, StageCheckpoint(run_dir, runtime.checkpoint_every, logger)
    except Exception:
        logger.close()
        raise


def log_records(run_dir: Path, phase: str) -> list[dict[str, Any]]:
    """The step records of one phase in a stage's log.jsonl (what the convergence measure reads)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return [r for r in records if r.get("phase") == phase and "step" in r]
