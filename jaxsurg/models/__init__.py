"""Flax Linen models (NHWC)."""

from jaxsurg.models.convlstm import ConvLSTM, ConvLSTMCell, UNet11ConvLSTM, param_labels
from jaxsurg.models.flow_predictor import MotionFlowPredictor
from jaxsurg.models.heads import KeypointHead, SideTuneNetwork, SideTuneSegmentationHead
from jaxsurg.models.layers import Conv2d, ConvReLU, ConvTranspose4x4s2, conv_transpose_4x4_s2
from jaxsurg.models.segformer import MiTEncoder, SegFormer
from jaxsurg.models.unet import FlowCompensator, UNet5
from jaxsurg.models.unet11 import DecoderBlock, UNet11
from jaxsurg.models.vgg import VGG11Encoder, imagenet_normalize, max_pool_2x2
from jaxsurg.models.vgg16 import VGG16Features

__all__ = [
    "Conv2d",
    "ConvLSTM",
    "ConvLSTMCell",
    "ConvReLU",
    "ConvTranspose4x4s2",
    "DecoderBlock",
    "FlowCompensator",
    "KeypointHead",
    "MiTEncoder",
    "MotionFlowPredictor",
    "SegFormer",
    "SideTuneNetwork",
    "SideTuneSegmentationHead",
    "UNet11",
    "UNet11ConvLSTM",
    "UNet5",
    "VGG11Encoder",
    "VGG16Features",
    "conv_transpose_4x4_s2",
    "imagenet_normalize",
    "max_pool_2x2",
    "param_labels",
]
