"""Networks built from config: VGG (a cfg list), ResNet (block counts and widths) and airbench94's ConvGroups."""

from cnnlab.models.airbench import ConvGroups
from cnnlab.models.resnet import ResNet
from cnnlab.models.vgg import VGG

__all__ = ["VGG", "ConvGroups", "ResNet"]
