"""Nested model zoo and the string registry used by configs (``mlp``, ``lenet``, ``vgg``, ``resnet``,
``vit``, and any network through ``torchvision`` / ``import``)."""

from bnn_nested.models.lenet import NestedLeNet
from bnn_nested.models.mlp import NestedMLP
from bnn_nested.models.options import NestOptions
from bnn_nested.models.registry import MODELS, build_model, register_model
from bnn_nested.models.resnet import NestedResNet
from bnn_nested.models.vgg import VGG_CONFIGS, NestedConvBlock, NestedVGG
from bnn_nested.models.vit import ViT

from bnn_nested.models.external import resolve_target, torchvision_archs  # isort: skip
from bnn_nested.models.plain import MLP, VGG, LeNet, ResNet  # isort: skip

__all__ = [
    "MLP",
    "MODELS",
    "VGG",
    "LeNet",
    "ResNet",
    "VGG_CONFIGS",
    "NestedConvBlock",
    "NestedLeNet",
    "NestedMLP",
    "NestedResNet",
    "NestedVGG",
    "NestOptions",
    "ViT",
    "build_model",
    "register_model",
    "resolve_target",
    "torchvision_archs",
]
