"""ResNet v1.5 (He et al. 2016) for single- or three-channel X-rays."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xray_jax.models import common


class ResidualBlock(nn.Module):
  """Fields shared by the residual blocks: output width (before expansion), stride of the
  first strided convolution, normalization and convolution layers (bias-free)."""

  width: int
  strides: int = 1
  norm: Any = nn.BatchNorm
  conv: Any = functools.partial(nn.Conv, use_bias=False)


class BasicBlock(ResidualBlock):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = self.conv(self.width, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.width, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)  # Each block starts as identity.
    if x.shape != y.shape:
      x = self.norm()(self.conv(self.width, (1, 1), self.strides)(x))
    return nn.relu(x + y)


class Bottleneck(ResidualBlock):
  """1x1 -> 3x3 (strided) -> 1x1 convolutions with 4x expansion (ResNet-50)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = nn.relu(self.norm()(self.conv(self.width, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.width, (3, 3), self.strides)(y)))
    y = self.conv(self.width * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = self.norm()(self.conv(self.width * 4, (1, 1), self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A stem, four stages of residual blocks, global average pooling."""

  num_classes: int
  stage_sizes: Sequence[int]
  block: type[nn.Module]
  width: int = 64
  dropout: float = 0.0
  dtype: Any = jnp.float32
  batch_norm_momentum: float = 0.9
  stem: str = "imagenet"  # One of common.STEMS. Runs saved before this field used "imagenet".
  style_mixing: float = 0.0  # MixStyle's probability per batch after the first stages; 0: off.
  style_mixing_alpha: float = 0.1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    norm, conv = common.norm_and_conv(train, self.batch_norm_momentum, self.dtype)
    x = x.astype(self.dtype)
    x = common.stem(x, self.stem, self.width, norm, conv)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        x = self.block(self.width * 2**stage, strides, norm=norm, conv=conv)(x)
      x = common.mix_styles(x, stage, self.style_mixing, self.style_mixing_alpha, train)
    return common.pooled_head(self, x, self.num_classes, self.dropout, train, self.dtype)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
