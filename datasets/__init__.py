"""Dataset loaders (real on-disk formats) and the synthetic scene generator; importing registers them."""

from mtlprune.datasets import nyuv2, taskonomy

__all__ = ["nyuv2", "taskonomy"]
