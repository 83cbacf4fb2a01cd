"""What Dual Motion Flow's stages share: the frozen VGG16 of the perceptual losses (L_p of
Sec. 2.1, Eq. 3; L_cp of Sec. 2.2, Eq. 6) and the fixed-size chunks in which D_R and D_C
are generated.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxsurg.models.vgg16 import VGG16Features
from jaxsurg.weights.vgg16 import frozen_vgg16


def make_vgg(config: ml_collections.ConfigDict, layers: tuple[str, ...]) -> tuple[VGG16Features, Any]:
    """The frozen VGG16 feature extractor for ``layers`` and its params from
    ``config.vgg16_weights`` ('random' warns: such features are not the paper's)."""
    return frozen_vgg16(config.vgg16_weights, layers, tuple(config.resize), config.seed + 3)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        chunk = items[i : i + size]
        yield chunk, chunk + [chunk[-1]] * (size - len(chunk))  # padded to a fixed batch
