"""Classification losses: `config.loss.name` picks one, `create_loss` (one class per image)
or `create_multilabel_loss` (one sigmoid per finding) builds it with the config's label
smoothing and class weights bound in."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from xray_jax import errors
from xray_jax import labels as labels_lib

LossFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> mean loss.
PerExample = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, targets) -> [B] losses.
PerEntry = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, targets) -> [B, K] losses.


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


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Each entry's sigmoid cross-entropy against its target probability."""
  return optax.sigmoid_binary_cross_entropy(logits, targets)


def sigmoid_focal(logits: jax.Array, targets: jax.Array, gamma: float) -> jax.Array:
  """Each entry's sigmoid focal loss: its cross-entropy times (1 - p_t)^gamma."""
  return optax.sigmoid_focal_loss(logits, targets, gamma=gamma)


# `config.loss.name` -> the per-finding loss of the multilabel task (same names as LOSSES).
MULTILABEL_LOSSES: dict[str, Callable[[ml_collections.ConfigDict], PerEntry]] = {
    "cross_entropy": lambda loss_config: binary_cross_entropy,
    "focal": lambda loss_config: functools.partial(sigmoid_focal, gamma=loss_config.focal_gamma),
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


def masked_mean_loss(per_entry: PerEntry, label_smoothing: float = 0.0,
                     positive_weights: np.ndarray | None = None) -> LossFn:
  """The mean of `per_entry` over the present entries of finding labels [B, K] (1 or 0;
  NaN or -1 missing), against targets t (1 - s) + s / 2 for `label_smoothing` s; with
  `positive_weights` [K], a positive label's loss times its finding's weight. A missing
  entry adds exactly zero to the loss and its gradient."""

  def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    is_present = labels_lib.present(labels)
    hard = jnp.where(is_present, labels, 0.0)  # No NaN reaches the log terms.
    losses = per_entry(logits, hard * (1.0 - label_smoothing) + label_smoothing / 2)
    if positive_weights is not None:
      losses = losses * jnp.where(hard == 1, jnp.asarray(positive_weights), 1.0)
    return (jnp.sum(jnp.where(is_present, losses, 0.0))
            / jnp.maximum(jnp.sum(is_present), 1))

  return loss


def create_loss(loss_config: ml_collections.ConfigDict, train_labels: np.ndarray,
                num_classes: int) -> LossFn:
  """The training loss `config.loss` describes; `train_labels` for balanced class weights."""
  class_weights = resolve_class_weights(loss_config.class_weights, train_labels, num_classes)
  return mean_loss(LOSSES[loss_config.name](loss_config), loss_config.label_smoothing,
                   class_weights)


def create_multilabel_loss(loss_config: ml_collections.ConfigDict, train_labels: np.ndarray,
                           num_findings: int) -> LossFn:
  """The multilabel training loss `config.loss` describes; `train_labels` [N, K] (after the
  uncertainty policy) for balanced positive weights."""
  positive_weights = resolve_positive_weights(loss_config.class_weights, train_labels,
                                              num_findings)
  return masked_mean_loss(MULTILABEL_LOSSES[loss_config.name](loss_config),
                          loss_config.label_smoothing, positive_weights)


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
  return _listed_weights(spec, num_classes)


def resolve_positive_weights(
    spec: str, labels: np.ndarray, num_findings: int
) -> np.ndarray | None:
  """Per-finding weights of a positive label from `config.loss.class_weights` (multilabel).

  `none` -> None; `balanced` -> n_negative / n_positive of each finding in the training
  labels [N, K], present labels only; `w0,w1,...` -> those numbers, one per finding.
  """
  if spec == "none":
    return None
  if spec == "balanced":
    labels = np.asarray(labels, np.float32).reshape(-1, num_findings)
    positives, negatives = np.sum(labels == 1, axis=0), np.sum(labels == 0, axis=0)
    return (negatives / np.maximum(positives, 1)).astype(np.float32)
  return _listed_weights(spec, num_findings)


def _listed_weights(spec: str, count: int) -> np.ndarray:
  """`config.loss.class_weights` = "w0,w1,...": `count` non-negative numbers."""
  try:
    weights = np.array([float(w) for w in spec.split(",")], np.float32)
  except ValueError:
    weights = np.array([])
  if len(weights) != count or np.any(weights < 0):
    raise errors.ConfigError(
        f"config.loss.class_weights={spec!r}: expected none, balanced or {count} "
        "non-negative comma-separated numbers")
  return weights
