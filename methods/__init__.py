"""Pruning-method plugins; importing this package registers the built-in ones in `bench.registry.METHODS`."""

from methods import (
    adapmtl,
    dense_finetune,
    disparse,
    gmp,
    lottery,
    magnitude,
    random_pruning,
    rigl,
    saliency,
)
from methods.base import MethodParams, NoParams, PruningMethod

__all__ = [
    "MethodParams",
    "NoParams",
    "PruningMethod",
    "adapmtl",
    "dense_finetune",
    "disparse",
    "gmp",
    "lottery",
    "magnitude",
    "random_pruning",
    "rigl",
    "saliency",
]
