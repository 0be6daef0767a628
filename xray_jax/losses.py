"""Classification losses: `config.loss.name` picks one, `create_loss` builds it with the
config's label smoothing and class weights bound in."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from xray_jax import errors

LossFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> mean loss.
PerExample = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, targets) -> [B] losses.


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Each example's softmax cross-entropy against its target distribution."""
  return optax.softmax_cross_entropy(logits, targets)


def focal(logits: jax.Array, targets: jax.Array, gamma: float) -> jax.Array:
  """Each example's focal loss (Lin et al. 2017): cross-entropy whose term for a class is
  scaled by (1 - p)^gamma, so examples the model already gets right count less."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.sum(targets * (-jnp.expm1(log_probs)) ** gamma * log_probs, axis=-1)


# `config.loss.name` -> the per-example loss, given `config.loss`.
LOSSES: dict[str, Callable[[ml_collections.ConfigDict], PerExample]] = {
    "cross_entropy": lambda loss_config: cross_entropy,
    "focal": lambda loss_config: functools.partial(focal, gamma=loss_config.focal_gamma),
}


def mean_loss(per_example: PerExample, label_smoothing: float = 0.0,
              class_weights: np.ndarray | None = None) -> LossFn:
  """The batch mean of `per_example` against one-hot labels mixed with a uniform target by
  `label_smoothing`; with `class_weights`, each example's loss times its label's weight."""

  def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    losses = per_example(logits, targets)
    if class_weights is not None:
      losses = losses * jnp.asarray(class_weights)[labels]
    return jnp.mean(losses)

  return loss


def create_loss(loss_config: ml_collections.ConfigDict, train_labels: np.ndarray,
                num_classes: int) -> LossFn:
  """The training loss `config.loss` describes; `train_labels` for balanced class weights."""
  class_weights = resolve_class_weights(loss_config.class_weights, train_labels, num_classes)
  return mean_loss(LOSSES[loss_config.name](loss_config), loss_config.label_smoothing,
                   class_weights)


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
