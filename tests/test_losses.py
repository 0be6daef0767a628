"""Cross-entropy with label smoothing, class weights and masks; class weight specs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_jax import errors, losses


def test_cross_entropy_matches_a_hand_computation():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  labels = jnp.array([0, 1, 1])
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  plain = -np.mean(log_probs[np.arange(3), labels])
  assert losses.cross_entropy(logits, labels) == pytest.approx(plain, rel=1e-6)

  weights = np.array([1.0, 3.0], np.float32)
  weighted = -np.mean(weights[labels] * log_probs[np.arange(3), labels])
  loss = jax.jit(losses.cross_entropy, static_argnums=2)(logits, labels, 0.0, weights)
  assert loss == pytest.approx(weighted, rel=1e-6)

  mask = jnp.array([1.0, 1.0, 0.0])
  assert losses.cross_entropy(logits, labels, mask=mask) == pytest.approx(
      -np.mean(log_probs[[0, 1], [0, 1]]), rel=1e-6)

  smoothing = 0.2
  targets = np.eye(2)[labels] * (1 - smoothing) + smoothing / 2
  smoothed = -np.mean(np.sum(targets * log_probs, axis=1))
  assert losses.cross_entropy(logits, labels, smoothing) == pytest.approx(smoothed, rel=1e-6)


def test_class_weight_specs():
  labels = np.array([0, 0, 0, 1])
  assert losses.resolve_class_weights("none", labels, 2) is None
  np.testing.assert_allclose(losses.resolve_class_weights("balanced", labels, 2),
                             [4 / 6, 2.0])
  np.testing.assert_allclose(losses.resolve_class_weights("1,2.5", labels, 2), [1.0, 2.5])
  with pytest.raises(errors.ConfigError, match="class_weights='1,2,3'"):
    losses.resolve_class_weights("1,2,3", labels, 2)
