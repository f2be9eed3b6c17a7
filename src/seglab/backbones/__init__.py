"""Backbones: each declares its feature names, channels (``.channels``) and strides (``.strides``)."""
from .batchnorm import freeze_batch_norm
from .vgg import VGG16, load_torchvision_weights

__all__ = ["VGG16", "freeze_batch_norm", "load_torchvision_weights"]
