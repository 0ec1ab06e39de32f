"""Dataset loaders (real on-disk formats) and the synthetic scene generator; importing registers them."""

from datasets import nyuv2

__all__ = ["nyuv2"]
