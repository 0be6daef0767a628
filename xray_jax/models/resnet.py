"""ResNet v1.5 (He et al. 2016) for single- or three-channel X-rays."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xray_jax.models import common, pooling


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


# Stems: the ImageNet stem (7x7 convolution, stride 2, then 3x3 max-pool, stride 2), one for
# small inputs (3x3 convolution, stride 1, no pool), one for large inputs at a small input's
# cost ("fast": 4x4 convolution on non-overlapping patches, stride 4, then 3x3 max-pool,
# stride 2), and "auto": the small stem below SMALL_STEM_BELOW pixels, else the ImageNet stem.
STEMS = ("imagenet", "small", "fast", "auto")
SMALL_STEM_BELOW = 28  # Why 28: docs/results.md, "Input size and stem".


def stem_for(stem: str, input_size: int) -> str:
  """The stem that `stem` ("auto" included) means for square inputs of `input_size` pixels."""
  if stem == "auto":
    return "small" if input_size < SMALL_STEM_BELOW else "imagenet"
  return stem


class ResNet(nn.Module):
  """A stem, four stages of residual blocks, global average pooling."""

  num_classes: int
  stage_sizes: Sequence[int]
  block: type[nn.Module]
  width: int = 64
  dropout: float = 0.0
  dtype: Any = jnp.float32
  batch_norm_momentum: float = 0.9
  stem: str = "imagenet"  # One of STEMS. Runs saved before this field used "imagenet".

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.batch_norm_momentum, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    x = x.astype(self.dtype)
    stem = stem_for(self.stem, x.shape[1])
    if stem == "small":
      x = nn.relu(norm()(conv(self.width, (3, 3))(x)))
    else:
      kernel, stride = ((4, 4), 4) if stem == "fast" else ((7, 7), 2)
      x = nn.relu(norm()(conv(self.width, kernel, stride)(x)))
      x = pooling.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        x = self.block(self.width * 2**stage, strides, norm=norm, conv=conv)(x)
    x = common.expose_features(self, x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
