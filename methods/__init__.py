"""Pruning-method plugins; importing this package registers the built-in ones in `bench.registry.METHODS`."""

from methods import magnitude, random_pruning
from methods.base import MethodParams, NoParams, PruningMethod

__all__ = ["MethodParams", "NoParams", "PruningMethod", "magnitude", "random_pruning"]
