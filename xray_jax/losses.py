"""Classification losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xray_jax import errors


def cross_entropy(
    logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float = 0.0,
    class_weights: jnp.ndarray | None = None, mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Mean softmax cross-entropy over the examples where `mask` is 1.

  `label_smoothing` mixes the one-hot target with a uniform one; with `class_weights`
  an example's loss is multiplied by the weight of its label.
  """
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  losses = optax.softmax_cross_entropy(logits, targets)
  mask = jnp.ones_like(losses) if mask is None else mask
  weights = mask if class_weights is None else mask * jnp.asarray(class_weights)[labels]
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(mask), 1.0)


def resolve_class_weights(
    spec: str, labels: np.ndarray, num_classes: int
) -> np.ndarray | None:
  """Per-class loss weights from `config.loss.class_weights`.

  `none` -> None; `balanced` -> n / (num_classes * n_c) from the training labels;
  `w0,w1,...` -> those numbers, one per class.
  """
  if spec == "none":
    return None
  if spec == "balanced":
    counts = np.bincount(labels, minlength=num_classes)
    return (len(labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)
  try:
    weights = np.array([float(w) for w in spec.split(",")], np.float32)
  except ValueError:
    weights = np.array([])
  if len(weights) != num_classes or np.any(weights < 0):
    raise errors.ConfigError(
        f"config.loss.class_weights={spec!r}: expected none, balanced or {num_classes} "
        "non-negative comma-separated numbers")
  return weights
