"""The tap-gradient max-pooling against XLA's: values, gradients, ties and whole train steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SMALL_MODELS, assert_same_training, three_train_steps
from jax import lax

from xray_jax.models import pooling

CASES = [  # input shape, window, strides, padding
    ((3, 8, 10, 4), (2, 2), (2, 2), "VALID"),  # The CNN's blocks.
    ((2, 13, 11, 3), (3, 3), (2, 2), "SAME"),  # ResNet's stem, odd sizes.
    ((2, 7, 7, 2), (3, 3), (1, 1), "SAME"),  # Overlapping windows at stride 1.
    ((2, 9, 8, 3), (2, 3), (1, 2), ((1, 0), (2, 1))),  # Explicit, uneven padding.
]


def _value_and_gradient(pool, x, dy, window, strides, padding):
  y, vjp = jax.vjp(lambda x: pool(x, window, strides, padding), x)
  return y, vjp(dy)[0]


def _compare(x, window, strides, padding, seed=1):
  y = nn.max_pool(x, window, strides, padding)
  dy = jnp.asarray(np.random.default_rng(seed).normal(size=y.shape), jnp.float32)
  ours = _value_and_gradient(pooling.max_pool, x, dy, window, strides, padding)
  xla = _value_and_gradient(nn.max_pool, x, dy, window, strides, padding)
  return ours, xla, dy


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_match_xla(case):
  shape, window, strides, padding = case
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  (y, dx), (xla_y, xla_dx), _ = _compare(x, window, strides, padding)
  np.testing.assert_array_equal(y, xla_y)
  np.testing.assert_allclose(dx, xla_dx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_ties_go_to_one_tap_as_in_xla(case):
  """After a ReLU many windows hold several equal maxima (zeros): each output's gradient
  must reach exactly one of them, the one XLA picks."""
  shape, window, strides, padding = case
  rng = np.random.default_rng(2)
  x = jnp.asarray(np.maximum(rng.integers(-2, 2, size=shape), 0), jnp.float32)
  (_, dx), (_, xla_dx), dy = _compare(x, window, strides, padding)
  np.testing.assert_array_equal(dx != 0, xla_dx != 0)
  np.testing.assert_allclose(dx, xla_dx, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jnp.sum(dx), jnp.sum(dy), rtol=1e-5)


def test_the_cpu_path_is_the_tap_gradient():
  """On the CPU, the gradient is `tap_gradient`'s, not XLA's reduce-window and scatter."""
  assert jax.default_backend() == "cpu"
  x = jnp.ones((2, 8, 8, 3))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(pooling.max_pool(x, (2, 2), (2, 2)))))
  hlo = grad.lower(x).compile().as_text()
  assert "scatter" not in hlo and "select-and-scatter" not in hlo
  xla_grad = jax.jit(jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2)))))
  assert "scatter" in xla_grad.lower(x).compile().as_text()


def test_string_padding_matches_explicit_pads():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 7, 7, 1)), jnp.float32)
  pads = lax.padtype_to_pads((7, 7), (3, 3), (2, 2), "SAME")
  np.testing.assert_array_equal(pooling.max_pool(x, (3, 3), (2, 2), "SAME"),
                                pooling.max_pool(x, (3, 3), (2, 2), pads))


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_train_steps_match_xla_pooling(name, monkeypatch):
  ours = three_train_steps(name)
  monkeypatch.setattr(pooling, "max_pool", nn.max_pool)
  assert_same_training(ours, three_train_steps(name), rtol=1e-5, atol=1e-6)
