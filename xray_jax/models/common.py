"""Pieces shared by the model families."""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_jax.models import pooling

FEATURES = "features"  # Name of the last convolutional feature map (Grad-CAM reads it).


def expose_features(module: nn.Module, x: jnp.ndarray) -> jnp.ndarray:
  """Records `x` in the `intermediates` collection and lets a `perturbations` variable be
  added to it, so gradients with respect to this feature map can be taken. A no-op unless
  those collections are requested."""
  module.sow("intermediates", FEATURES, x)
  return module.perturb(FEATURES, x)


# MixStyle acts after this many of the first stages (ResNet stages, CNN blocks, dense blocks):
# the paper's choice for classification (Zhou et al. 2021: after res1 and res2).
STYLE_MIXING_STAGES = 2


class MixStyle(nn.Module):
  """Style randomization in feature space (MixStyle, Zhou et al. 2021). In training, with
  `probability` per batch, each image's per-channel feature mean and standard deviation are
  replaced by a Beta(alpha, alpha) blend of its own and those of another image of the batch,
  its normalized content kept (the statistics pass no gradient). Identity in inference."""

  probability: float
  alpha: float = 0.1
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    if not train or self.probability <= 0:
      return x
    apply_key, weight_key, partner_key = jax.random.split(self.make_rng("dropout"), 3)
    features = x.astype(jnp.float32)
    mean = jax.lax.stop_gradient(features.mean(axis=(1, 2), keepdims=True))
    std = jax.lax.stop_gradient(
        jnp.sqrt(features.var(axis=(1, 2), keepdims=True) + self.epsilon))
    weight = jax.random.beta(weight_key, self.alpha, self.alpha, (x.shape[0], 1, 1, 1))
    partner = jax.random.permutation(partner_key, x.shape[0])
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    styled = ((features - mean) / std * mixed_std + mixed_mean).astype(x.dtype)
    return jnp.where(jax.random.uniform(apply_key) < self.probability, styled, x)


def mix_styles(x: jnp.ndarray, stage: int, probability: float, alpha: float,
               train: bool) -> jnp.ndarray:
  """`x`, the output of stage `stage` (from 0), through MixStyle if it is one of the first
  STYLE_MIXING_STAGES and `probability` > 0. Call it inside a compact module."""
  if probability <= 0 or stage >= STYLE_MIXING_STAGES:
    return x
  return MixStyle(probability, alpha)(x, train)


def pooled_head(module: nn.Module, x: jnp.ndarray, num_classes: int, dropout: float,
                train: bool, dtype: Any) -> jnp.ndarray:
  """Float32 logits from the last feature map `x` (exposed for Grad-CAM): global average
  pooling, dropout and a dense layer, made inside `module`'s compact method."""
  x = expose_features(module, x)
  x = jnp.mean(x, axis=(1, 2))
  x = nn.Dropout(dropout, deterministic=not train)(x)
  return nn.Dense(num_classes, dtype=dtype)(x).astype(jnp.float32)


def norm_and_conv(train: bool, momentum: float, dtype: Any) -> tuple[Callable[..., nn.Module],
                                                                     Callable[..., nn.Module]]:
  """BatchNorm (batch statistics in training) and bias-free convolution layers."""
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum,
                           dtype=dtype)
  return norm, functools.partial(nn.Conv, use_bias=False, dtype=dtype)


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


def stem(x: jnp.ndarray, kind: str, width: int, norm: Callable[..., nn.Module],
         conv: Callable[..., nn.Module]) -> jnp.ndarray:
  """The stem `kind` (one of STEMS) with `width` channels: convolution, BatchNorm, ReLU, and
  max-pooling unless small. Call it inside a compact module: its layers become that module's."""
  kind = stem_for(kind, x.shape[1])
  if kind == "small":
    return nn.relu(norm()(conv(width, (3, 3))(x)))
  kernel, stride = ((4, 4), 4) if kind == "fast" else ((7, 7), 2)
  x = nn.relu(norm()(conv(width, kernel, stride)(x)))
  return pooling.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
