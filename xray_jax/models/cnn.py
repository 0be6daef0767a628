"""The classic CNN: blocks of conv -> ReLU -> max-pool, then a dense head with dropout."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xray_jax.models import common, pooling


class ClassicCNN(nn.Module):
  """Conv blocks (each: `convs_per_block` x [conv, BN, ReLU], then 2x2 max-pool), pooling,
  dense layers with dropout, and class logits."""

  num_classes: int
  widths: Sequence[int] = (32, 64, 128, 256)
  convs_per_block: int = 1
  batch_norm: bool = True
  pooling: str = "avg"
  dense: Sequence[int] = (256,)
  dropout: float = 0.3
  dtype: Any = jnp.float32
  batch_norm_momentum: float = 0.9
  style_mixing: float = 0.0  # MixStyle's probability per batch after the first blocks; 0: off.
  style_mixing_alpha: float = 0.1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv = functools.partial(nn.Conv, dtype=self.dtype)
    x = x.astype(self.dtype)
    for block, width in enumerate(self.widths):
      for _ in range(self.convs_per_block):
        x = conv(width, (3, 3), use_bias=not self.batch_norm)(x)
        if self.batch_norm:
          x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                           dtype=self.dtype)(x)
        x = nn.relu(x)
      if block == len(self.widths) - 1:
        x = common.expose_features(self, x)
      x = pooling.max_pool(x, (2, 2), strides=(2, 2))
      x = common.mix_styles(x, block, self.style_mixing, self.style_mixing_alpha, train)
    if self.pooling == "avg":
      x = jnp.mean(x, axis=(1, 2))
    elif self.pooling == "max":
      x = jnp.max(x, axis=(1, 2))
    else:
      x = x.reshape((x.shape[0], -1))
    for units in self.dense:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = nn.relu(nn.Dense(units, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
