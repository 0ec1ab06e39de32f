"""The built-in dataset loaders; importing registers them (mtlprune.registry loads this module by name)."""

from mtlprune.datasets import nyuv2, taskonomy

__all__ = ["nyuv2", "taskonomy"]
