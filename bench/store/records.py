"""Typed records of the store: what ``result.json`` (dense stage or cell) and ``status.json`` hold.

The engine builds these models and writes them (:meth:`Store.write_result`, :meth:`Store.write_status`);
``load_results``, the report, ``mtlprune status`` and the estimate read them back through
:meth:`Store.result` / :meth:`Store.status_record`, and the tests' fake store builds them too, so the
on-disk contract is written down once. Torch-free.

Every record carries ``format`` (:data:`RECORD_FORMAT`). Files written before the field existed have the
same shape and read as format 1; a file of a newer format, or one that does not match its model, fails
with a message naming the file. Reading tolerates keys this version does not know (a result written by a
later minor change keeps loading); writing does not (a misspelt key is a bug, caught when it is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError

RECORD_FORMAT = 1
STATUSES = ("pending", "running", "failed", "done")
FAILURE_KINDS = ("error", "diverged", "oom", "blocked")


class Record(BaseModel):
    """Base of every stored record: frozen, tolerant of unknown keys when read, with a format version."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: int = Field(RECORD_FORMAT, description="record format version (absent in older files: 1)")

    def payload(self) -> dict[str, Any]:
        """The JSON object to write; refuses keys that are not fields (a writer's typo)."""
        if self.model_extra:
            raise ValueError(f"{type(self).__name__}: unknown keys {sorted(self.model_extra)}")
        return self.model_dump(mode="json")


class SelectionRecord(Record):
    """Which weights the stage ended on: the rule (``last`` / ``best_val``) and the selected step."""

    rule: str
    selected_step: int | None = None


class Splits(Record):
    """Sample counts of the splits the stage used."""

    train: int
    val: int
    test: int


class ResumedFrom(Record):
    """Where a resumed stage picked up: the ``train()`` call and the step of its checkpoint."""

    call: int
    step: int


class StoredFile(Record):
    """A file a result stands on, as it was when the result was written (mtlprune.store.integrity)."""

    format: int | None = None  # versioned by the result that holds it
    bytes: int = Field(ge=0)
    mtime_ns: int
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class StageResult(Record):
    """What every finished stage records (``result.json``; its presence means the stage is done)."""

    run_id: str
    metrics: dict[str, float | None]
    sparsity: dict[str, Any]
    costs: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    steps_total: int = Field(ge=0, strict=True)
    selection: SelectionRecord | None = None
    splits: Splits | None = None
    wall_s: float = Field(ge=0, allow_inf_nan=False, strict=True, description="seconds the stage took")
    device: str | None = None
    determinism: dict[str, Any] | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    resumed_from: ResumedFrom | None = None
    files: dict[str, StoredFile] | None = Field(
        None, description="checkpoints and masks the result stands on (None: an older file, not recorded)"
    )


class DenseResult(StageResult):
    """The dense stage: its metrics, the trivial predictor's, the step-0 losses and its convergence."""

    stage: Literal["dense"] = "dense"
    trivial_metrics: dict[str, float | None] | None = None
    initial_losses: dict[str, float] | None = None
    convergence: dict[str, Any] | None = None
    rewind_step: int | None = None


class CellResult(StageResult):
    """One cell: a method at a target sparsity, with the dense stage and control cell it is compared to."""

    stage: Literal["cell"] = "cell"
    dense_run_id: str
    control_run_id: str | None = None
    steps_method: int
    starts_from: str
    method_state: dict[str, Any] = Field(default_factory=dict)


IMPORT_FORMATS = ("adapmtl", "disparse", "adashare")


class ImportedResult(StageResult):
    """A checkpoint trained by a reference code base, imported into the benchmark's model and evaluated
    under every protocol (``mtlprune import-checkpoint``; docs/datasets.md, "Importing reference
    checkpoints"). ``metrics`` are the ``standard`` protocol's; ``protocol_metrics`` holds each protocol's.
    ``model.pt`` beside it holds the converted weights (the thresholded ones for AdapMTL)."""

    stage: Literal["imported"] = "imported"
    source_format: Literal["adapmtl", "disparse", "adashare"]
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the imported file")
    source_bytes: int = Field(ge=0)
    source_name: str = Field(description="the imported file's name (not part of the identity)")
    dataset: str
    tasks: list[str]
    arch: str
    width: float = 1.0
    head_width: float = 1.0
    protocol_metrics: dict[str, dict[str, float | None]]
    key_mapping: dict[str, Any] = Field(
        description="how their keys became ours: counts, thresholds, transforms, defaulted keys"
    )


class StatusRecord(Record):
    """``status.json``: where a stage is (running, failed with why, done) and who ran it."""

    status: Literal["pending", "running", "failed", "done"]
    host: str | None = None
    pid: int | None = None
    started: float | None = None
    finished: float | None = None
    kind: str | None = Field(None, description=f"for a failure: one of {FAILURE_KINDS}")
    error: str | None = None
    traceback: str | None = None
    log_tail: list[str] = Field(default_factory=list)
    divergence: dict[str, Any] | None = None
    superseded: str | None = Field(None, description="code hash of a result set aside by --recompute-changed")


AnyResult = Annotated[DenseResult | CellResult | ImportedResult, Field(discriminator="stage")]
_RESULT = TypeAdapter(AnyResult)


def _check_format(payload: Any, path: Path, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object ({what}), got {type(payload).__name__}")
    version = payload.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= RECORD_FORMAT:
        raise ValueError(
            f"{path}: {what} format {version!r}, but this mtlprune reads formats 1..{RECORD_FORMAT} "
            "(written by a newer mtlprune? upgrade to read it)"
        )
    return payload


def _problems(exc: ValidationError) -> str:
    """``key.path: message (got value)`` per problem; the union tag (dense/cell) is left out of the path."""
    lines = []
    for e in exc.errors(include_url=False):
        loc = list(e["loc"])
        if loc and loc[0] in ("dense", "cell", "imported"):
            loc = loc[1:]
        got = (
            "" if e["type"] == "missing" or isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
        )
        lines.append(f"{'.'.join(str(p) for p in loc) or '<top level>'}: {e['msg']}{got}")
    return "; ".join(lines)


def parse_result(payload: Any, path: Path) -> DenseResult | CellResult | ImportedResult:
    """A ``result.json`` payload as its typed record; a clear error naming ``path`` otherwise."""
    payload = _check_format(payload, path, "result")
    if "stage" not in payload:  # the oldest results: a cell names its dense stage
        payload = {**payload, "stage": "cell" if "dense_run_id" in payload else "dense"}
    try:
        return _RESULT.validate_python(payload)
    except ValidationError as exc:
        raise ValueError(f"{path}: not a valid result record ({_problems(exc)})") from None


def parse_status(payload: Any, path: Path) -> StatusRecord:
    """A ``status.json`` payload as its typed record; a clear error naming ``path`` otherwise."""
    payload = _check_format(payload, path, "status")
    try:
        return StatusRecord.model_validate(payload)
    except ValidationError as exc:
        raise ValueError(f"{path}: not a valid status record ({_problems(exc)})") from None


# ------------------------------------------------------------------------------------------- manifest


class ManifestDense(Record):
    """A dense stage the matrix needs, as the report shows it without a result."""

    format: int | None = None  # entries are versioned by their manifest
    run_id: str
    dataset: str
    tasks: list[str]
    arch: str
    width: float | None = None
    head_width: float | None = None
    seed: int
    protocol: str = "standard"


class ManifestCell(ManifestDense):
    """A planned cell: enough to list it in the report (as ``missing``) before it has a result."""

    dense_run_id: str
    method: str = Field(description="the method's label (name and non-default params)")
    method_name: str
    target: float


class Manifest(Record):
    """``<store>/<matrix>/matrix.json``: what a matrix expands to, written by ``mtlprune run`` so that the
    report (torch-free, no plugins) knows every planned cell."""

    name: str
    spec: dict[str, Any]
    dense: list[ManifestDense]
    cells: list[ManifestCell]
    overrides: list[str] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)

    _path: Path | None = PrivateAttr(None)

    @property
    def path(self) -> Path | None:
        """The file it was read from (None for one built in memory)."""
        return self._path

    @property
    def cell_ids(self) -> list[str]:
        return [cell.run_id for cell in self.cells]


def parse_manifest(payload: Any, path: Path) -> Manifest:
    """A ``matrix.json`` payload as its typed record; a clear error naming ``path`` otherwise."""
    payload = _check_format(payload, path, "manifest")
    try:
        manifest = Manifest.model_validate(payload)
    except ValidationError as exc:
        raise ValueError(f"{path}: not a valid manifest ({_problems(exc)})") from None
    manifest._path = path
    return manifest
