"""Grad-CAM saliency (Selvaraju et al. 2017) on the last convolutional feature map."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps

from xray_jax.models.common import FEATURES


def grad_cam(model: nn.Module, variables: dict, images: jax.Array,
             class_indices: jax.Array) -> jax.Array:
  """Heat maps [N, H, W] in [0, 1] of where `images` support their `class_indices`.

  Each feature channel is weighted by the spatial mean of the class logit's gradient with
  respect to it; the ReLU of the weighted sum is resized to the input and scaled to [0, 1].
  """
  _, zeros = model.apply(variables, images, train=False, mutable=["perturbations"])

  def class_logits(perturbations):
    logits, state = model.apply({**variables, **perturbations}, images, train=False,
                                mutable=["intermediates"])
    chosen = jnp.take_along_axis(logits, class_indices[:, None], axis=1)
    return jnp.sum(chosen), state["intermediates"][FEATURES][0]

  grads, features = jax.grad(class_logits, has_aux=True)(zeros)
  grads = grads["perturbations"][FEATURES]
  weights = jnp.mean(grads, axis=(1, 2), keepdims=True)
  cam = nn.relu(jnp.sum(weights * features, axis=-1)).astype(jnp.float32)
  cam = jax.image.resize(cam, (cam.shape[0], *images.shape[1:3]), "bilinear")
  peak = jnp.max(cam, axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """An RGB uint8 picture of a gray image [H, W] in [0, 1] under a jet-coloured heat map."""
  colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
  base = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=-1)
  return np.round(255 * ((1 - alpha) * base + alpha * colours)).astype(np.uint8)
