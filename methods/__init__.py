"""Pruning-method plugins; importing this package registers the built-in ones in `mtlprune.METHODS`."""

from mtlprune.methods import (
    adapmtl,
    dense_finetune,
    disparse,
    ecs,
    gmp,
    lottery,
    magnitude,
    random_pruning,
    rigl,
    saliency,
)
from mtlprune.methods.base import MethodParams, NoParams, OneShotMethod, PruningMethod

__all__ = [
    "MethodParams",
    "NoParams",
    "OneShotMethod",
    "PruningMethod",
    "adapmtl",
    "dense_finetune",
    "disparse",
    "ecs",
    "gmp",
    "lottery",
    "magnitude",
    "random_pruning",
    "rigl",
    "saliency",
]
