"""Backbones: each declares its feature names, channels (``.channels``) and strides (``.strides``)."""
from .pretrained import freeze_batch_norm, load_torchvision_weights, prepare_backbone
from .resnet import BASIC_DEPTHS, BasicResNet, ResNet
from .vgg import VGG16, deeplab_vgg16_backbone, dilation_vgg16_frontend

__all__ = ["ResNet", "BasicResNet", "BASIC_DEPTHS", "VGG16", "deeplab_vgg16_backbone", "dilation_vgg16_frontend",
           "freeze_batch_norm", "load_torchvision_weights", "prepare_backbone"]
