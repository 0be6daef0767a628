"""DenseNet (Huang et al. 2017) with bottleneck layers and compression, for one- or
three-channel X-rays."""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xray_jax.models import common

BOTTLENECK = 4  # The 1x1 convolution of a dense layer outputs BOTTLENECK x growth_rate channels.
COMPRESSION = 0.5  # A transition layer keeps this share of its input's channels.


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 convolution, then BN-ReLU-3x3 convolution, of all earlier feature maps of
  its block concatenated; returns `growth_rate` new channels."""

  growth_rate: int
  norm: Callable[..., nn.Module]
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray]) -> jnp.ndarray:
    x = jnp.concatenate(features, axis=-1)
    x = self.conv(BOTTLENECK * self.growth_rate, (1, 1))(nn.relu(self.norm()(x)))
    return self.conv(self.growth_rate, (3, 3))(nn.relu(self.norm()(x)))


class DenseNet(nn.Module):
  """A stem, dense blocks joined by transition layers (BN-ReLU-1x1 convolution, 2x2
  average pooling), BN-ReLU, global average pooling."""

  num_classes: int
  block_sizes: Sequence[int]
  growth_rate: int = 32
  width: int = 64  # Channels of the stem.
  dropout: float = 0.0
  dtype: Any = jnp.float32
  batch_norm_momentum: float = 0.9
  stem: str = "imagenet"  # One of common.STEMS.
  style_mixing: float = 0.0  # MixStyle's probability per batch after the first blocks; 0: off.
  style_mixing_alpha: float = 0.1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    norm, conv = common.norm_and_conv(train, self.batch_norm_momentum, self.dtype)
    x = common.stem(x.astype(self.dtype), self.stem, self.width, norm, conv)
    for block, num_layers in enumerate(self.block_sizes):
      features = [x]
      for _ in range(num_layers):
        features.append(DenseLayer(self.growth_rate, norm, conv)(features))
      x = jnp.concatenate(features, axis=-1)
      if block < len(self.block_sizes) - 1:
        x = conv(int(x.shape[-1] * COMPRESSION), (1, 1))(nn.relu(norm()(x)))
        # Odd sizes round up (an edge window averages the pixels it has), so small inputs
        # keep a feature map through every transition.
        x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)
      x = common.mix_styles(x, block, self.style_mixing, self.style_mixing_alpha, train)
    x = nn.relu(norm()(x))
    return common.pooled_head(self, x, self.num_classes, self.dropout, train, self.dtype)


DenseNet121 = functools.partial(DenseNet, block_sizes=(6, 12, 24, 16))
