"""FCIS (arXiv:1611.07709); importing this package registers ``fcis_resnet18``, ``fcis_resnet50`` and
``fcis_resnet101``."""
from .heads import FCISRoIHeads, PSScoreMaps
from .joint import joint_scores
from .model import FCIS, fcis, fcis_resnet, fcis_resnet18, fcis_resnet50, fcis_resnet101
from .voting import mask_voting

__all__ = ["FCIS", "fcis", "fcis_resnet", "fcis_resnet18", "fcis_resnet50", "fcis_resnet101", "FCISRoIHeads",
           "PSScoreMaps", "joint_scores", "mask_voting"]
