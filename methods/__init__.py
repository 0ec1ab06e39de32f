"""Pruning-method plugins; importing this package registers the built-in ones in `bench.registry.METHODS`."""

from methods import adapmtl, disparse, gmp, lottery, magnitude, random_pruning, rigl, saliency
from methods.base import MethodParams, NoParams, PruningMethod

__all__ = [
    "MethodParams",
    "NoParams",
    "PruningMethod",
    "adapmtl",
    "disparse",
    "gmp",
    "lottery",
    "magnitude",
    "random_pruning",
    "rigl",
    "saliency",
]
