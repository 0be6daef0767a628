"""Losses with label smoothing and class weights, built from the config; class weight specs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xray_jax import errors, losses

LOGITS = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
LABELS = jnp.array([0, 1, 1])
LOG_PROBS = np.asarray(jax.nn.log_softmax(LOGITS))


def loss_config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {"name": "cross_entropy", "label_smoothing": 0.0, "class_weights": "none", **fields})


def test_cross_entropy_matches_a_hand_computation():
  plain = -np.mean(LOG_PROBS[np.arange(3), LABELS])
  assert losses.mean_loss(losses.cross_entropy)(LOGITS, LABELS) == pytest.approx(plain, rel=1e-6)

  weights = np.array([1.0, 3.0], np.float32)
  weighted = -np.mean(weights[LABELS] * LOG_PROBS[np.arange(3), LABELS])
  loss = jax.jit(losses.mean_loss(losses.cross_entropy, class_weights=weights))
  assert loss(LOGITS, LABELS) == pytest.approx(weighted, rel=1e-6)

  smoothing = 0.2
  targets = np.eye(2)[LABELS] * (1 - smoothing) + smoothing / 2
  smoothed = -np.mean(np.sum(targets * LOG_PROBS, axis=1))
  assert losses.mean_loss(losses.cross_entropy, smoothing)(LOGITS, LABELS) == pytest.approx(
      smoothed, rel=1e-6)


def test_create_loss_binds_the_configured_smoothing_and_class_weights():
  train_labels = np.array([0, 0, 0, 1])  # balanced: weights 4/6 and 2.
  loss = losses.create_loss(loss_config(label_smoothing=0.1, class_weights="balanced"),
                            train_labels, 2)
  expected = losses.mean_loss(losses.cross_entropy, 0.1, np.array([4 / 6, 2.0], np.float32))
  assert loss(LOGITS, LABELS) == pytest.approx(float(expected(LOGITS, LABELS)), rel=1e-6)
  assert loss(LOGITS, LABELS) != pytest.approx(
      float(losses.mean_loss(losses.cross_entropy, 0.1)(LOGITS, LABELS)), rel=1e-3)


def test_focal_matches_a_hand_computation():
  # p of the true class: sigmoid(2), sigmoid(1), 1/2; each term -(1 - p)^2 log p.
  loss = losses.create_loss(loss_config(name="focal", focal_gamma=2.0), np.array([0, 1]), 2)
  assert loss(LOGITS, LABELS) == pytest.approx(0.0659161385, rel=1e-5)
  weighted = losses.create_loss(loss_config(name="focal", focal_gamma=2.0, class_weights="1,3"),
                                np.array([0, 1]), 2)
  assert weighted(LOGITS, LABELS) == pytest.approx(0.1965460403, rel=1e-5)


@pytest.mark.parametrize("label_smoothing, class_weights", [(0.0, "none"), (0.2, "1,3")])
def test_focal_with_gamma_zero_is_cross_entropy(label_smoothing, class_weights):
  fields = dict(label_smoothing=label_smoothing, class_weights=class_weights, focal_gamma=0.0)
  focal = losses.create_loss(loss_config(**fields, name="focal"), np.array([0, 1]), 2)
  cross_entropy = losses.create_loss(loss_config(**fields), np.array([0, 1]), 2)
  assert focal(LOGITS, LABELS) == pytest.approx(float(cross_entropy(LOGITS, LABELS)), rel=1e-6)
  focal_grad = jax.grad(focal)(LOGITS, LABELS)
  np.testing.assert_allclose(focal_grad, jax.grad(cross_entropy)(LOGITS, LABELS), rtol=1e-5)


def test_class_weight_specs():
  labels = np.array([0, 0, 0, 1])
  assert losses.resolve_class_weights("none", labels, 2) is None
  np.testing.assert_allclose(losses.resolve_class_weights("balanced", labels, 2),
                             [4 / 6, 2.0])
  np.testing.assert_allclose(losses.resolve_class_weights("1,2.5", labels, 2), [1.0, 2.5])
  with pytest.raises(errors.ConfigError, match="class_weights='1,2,3'"):
    losses.resolve_class_weights("1,2,3", labels, 2)
