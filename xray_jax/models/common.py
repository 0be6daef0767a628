"""Pieces shared by the model families."""

import flax.linen as nn
import jax.numpy as jnp

FEATURES = "features"  # Name of the last convolutional feature map (Grad-CAM reads it).


def expose_features(module: nn.Module, x: jnp.ndarray) -> jnp.ndarray:
  """Records `x` in the `intermediates` collection and lets a `perturbations` variable be
  added to it, so gradients with respect to this feature map can be taken. A no-op unless
  those collections are requested."""
  module.sow("intermediates", FEATURES, x)
  return module.perturb(FEATURES, x)
