"""Backbones: each declares its feature names, channels (``.channels``) and strides (``.strides``)."""
from .batchnorm import freeze_batch_norm
from .vgg import VGG16, deeplab_vgg16_backbone, dilation_vgg16_frontend, load_torchvision_weights, prepare_vgg16

__all__ = ["VGG16", "deeplab_vgg16_backbone", "dilation_vgg16_frontend", "freeze_batch_norm",
           "load_torchvision_weights", "prepare_vgg16"]
