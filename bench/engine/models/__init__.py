"""Architectures; importing this package registers them in `mtlprune.registry.ARCHS`."""

from mtlprune.engine.models import mobilenetv2, resnet, vit
from mtlprune.engine.models.mtl import MTLModel

__all__ = ["MTLModel", "mobilenetv2", "resnet", "vit"]
