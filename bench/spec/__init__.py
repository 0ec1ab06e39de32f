"""Typed experiment specs, YAML loading with precise errors, and content-hash identity."""

from mtlprune.spec.identity import canonical_json, semantic_dump, spec_hash
from mtlprune.spec.load import ConfigError, load_matrix, parse_matrix
from mtlprune.spec.models import (
    CONTROL_METHOD,
    SCHEMA_VERSION,
    ArchSpec,
    DataSpec,
    DenseSpec,
    EvalSpec,
    MatrixSpec,
    MethodSpec,
    RunSpec,
    RuntimeSpec,
    StrictModel,
    SyntheticSpec,
    TrainSpec,
)

__all__ = [
    "CONTROL_METHOD",
    "SCHEMA_VERSION",
    "ArchSpec",
    "ConfigError",
    "DataSpec",
    "DenseSpec",
    "EvalSpec",
    "MatrixSpec",
    "MethodSpec",
    "RunSpec",
    "RuntimeSpec",
    "StrictModel",
    "SyntheticSpec",
    "TrainSpec",
    "canonical_json",
    "load_matrix",
    "parse_matrix",
    "semantic_dump",
    "spec_hash",
]
