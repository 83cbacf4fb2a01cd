"""Flax Linen models (NHWC)."""

from jaxsurg.models.layers import Conv2d, ConvReLU, ConvTranspose4x4s2, conv_transpose_4x4_s2
from jaxsurg.models.resnet import ResNet18
from jaxsurg.models.unet11 import DecoderBlock, UNet11
from jaxsurg.models.vgg import VGG11Encoder, imagenet_normalize, max_pool_2x2
from jaxsurg.models.vgg16 import VGG16Features

__all__ = [
    "Conv2d",
    "ConvReLU",
    "ConvTranspose4x4s2",
    "DecoderBlock",
    "ResNet18",
    "UNet11",
    "VGG11Encoder",
    "VGG16Features",
    "conv_transpose_4x4_s2",
    "imagenet_normalize",
    "max_pool_2x2",
]
