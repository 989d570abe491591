"""Networks built from config: VGG (a cfg list) and ResNet (block counts and widths)."""

from cnnlab.models.resnet import ResNet
from cnnlab.models.vgg import VGG, make_layers

__all__ = ["VGG", "ResNet", "make_layers"]
