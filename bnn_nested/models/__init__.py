"""The model zoo and the string registry used by configs (``mlp``, ``lenet``, ``vgg``, ``resnet``,
``vit``, and any network through ``torchvision`` / ``import``): plain definitions nested by
:func:`~bnn_nested.nest.nestify`."""

from bnn_nested.models.registry import MODELS, build_model, register_model
from bnn_nested.models.vit import ViT

from bnn_nested.models.external import resolve_target, torchvision_archs  # isort: skip
from bnn_nested.models.plain import MLP, VGG, VGG_CONFIGS, LeNet, ResNet  # isort: skip

__all__ = [
    "MLP",
    "MODELS",
    "VGG",
    "LeNet",
    "ResNet",
    "VGG_CONFIGS",
    "ViT",
    "build_model",
    "register_model",
    "resolve_target",
    "torchvision_archs",
]
