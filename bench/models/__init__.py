"""Architectures; importing this package registers them in `mtlprune.registry.ARCHS`."""

from mtlprune.models import mobilenetv2, resnet
from mtlprune.models.mtl import MTLModel

__all__ = ["MTLModel", "mobilenetv2", "resnet"]
