"""Architectures; importing this package registers them in `bench.registry.ARCHS`."""

from bench.models import mobilenetv2, resnet
from bench.models.mtl import MTLModel

__all__ = ["MTLModel", "mobilenetv2", "resnet"]
