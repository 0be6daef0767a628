"""The patches convolution against XLA's: values, gradients and whole train steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SMALL_MODELS, assert_same_training, three_train_steps
from jax import lax
from jax.test_util import check_grads

from xray_jax.models import conv


def _xla(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=conv.NHWC)


def _patches(x, w, strides, padding):
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], strides, padding)
  return conv.patches_conv(x, w, strides, padding)


def _inputs(batch, height, width, cin, cout, kernel, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, height, width, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*kernel, cin, cout)) / np.sqrt(cin * np.prod(kernel)),
                  jnp.float32)
  return x, w


CASES = [  # batch, height, width, cin, cout, kernel, strides, padding
    (4, 9, 7, 3, 5, (3, 3), (1, 1), "SAME"),
    (4, 9, 7, 3, 5, (3, 3), (2, 2), "SAME"),
    (3, 10, 9, 2, 4, (3, 3), (1, 1), "VALID"),
    (3, 11, 11, 4, 6, (1, 1), (2, 2), "VALID"),
    (2, 13, 12, 1, 8, (7, 7), (2, 2), "SAME"),
    (2, 8, 8, 3, 2, (3, 3), (1, 2), ((2, 0), (1, 1))),
    (5, 6, 6, 4, 4, (2, 3), (1, 1), "SAME"),
]


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_match_xla(case):
  batch, height, width, cin, cout, kernel, strides, padding = case
  x, w = _inputs(batch, height, width, cin, cout, kernel)
  cotangent = jnp.asarray(
      np.random.default_rng(1).normal(size=_xla(x, w, strides, padding).shape), jnp.float32)
  results = []
  for fn in (_xla, _patches):
    y, vjp = jax.vjp(lambda x, w, fn=fn: fn(x, w, strides, padding), x, w)
    results.append((y, *vjp(cotangent)))
  for ours, theirs in zip(results[1], results[0], strict=True):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences():
  x, w = _inputs(2, 6, 5, 2, 3, (3, 3))
  check_grads(lambda x, w: _patches(x, w, (2, 1), "SAME"), (x, w), order=1, modes=("rev",),
              atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("budget_images", [1, 2, 6])
def test_filter_gradient_is_the_same_for_any_chunking(monkeypatch, budget_images):
  x, w = _inputs(6, 8, 8, 3, 4, (3, 3))
  pads = lax.padtype_to_pads((8, 8), (3, 3), (1, 1), "SAME")
  dy = jnp.ones((6, 8, 8, 4), jnp.float32)
  monkeypatch.setattr(conv, "PATCH_CHUNK_BYTES", budget_images * 8 * 8 * 9 * 3 * 4)
  assert conv.chunk_size(6, 8 * 8 * 9 * 3 * 4) == budget_images
  _, vjp = jax.vjp(lambda w: _xla(x, w, (1, 1), pads), w)
  np.testing.assert_allclose(conv.filter_gradient(x, dy, w.shape, (1, 1), pads), vjp(dy)[0],
                             rtol=1e-5, atol=1e-5)


def test_chunk_size_divides_the_batch():
  assert conv.chunk_size(32, conv.PATCH_CHUNK_BYTES // 5) == 4
  assert conv.chunk_size(6, conv.PATCH_CHUNK_BYTES * 3) == 1


def _jaxpr_of_gradient(fn, x, w) -> str:
  return str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(fn(x, w, (1, 1), "SAME") ** 2)))(w))


def test_layers_that_change_width_use_patches_and_the_rest_xla():
  dispatch = lambda x, w, strides, padding: conv.patches_conv_general_dilated(
      x, w, strides, padding, dimension_numbers=conv.NHWC)
  assert "scan" in _jaxpr_of_gradient(dispatch, *_inputs(2, 6, 6, 3, 4, (3, 3)))
  assert "scan" not in _jaxpr_of_gradient(dispatch, *_inputs(2, 6, 6, 4, 4, (3, 3)))


def test_dilated_and_grouped_convolutions_fall_back_to_xla():
  x, w = _inputs(2, 9, 9, 4, 6, (3, 3))
  dilated = conv.patches_conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                              dimension_numbers=conv.NHWC)
  np.testing.assert_array_equal(dilated, lax.conv_general_dilated(
      x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=conv.NHWC))
  grouped_w = w[:, :, :2]
  grouped = conv.patches_conv_general_dilated(x, grouped_w, (1, 1), "SAME",
                                              dimension_numbers=conv.NHWC,
                                              feature_group_count=2)
  assert grouped.shape == (2, 9, 9, 6)


def test_impl_selection():
  assert jax.default_backend() == "cpu"
  assert conv.conv_general_dilated("auto") is conv.patches_conv_general_dilated
  assert conv.conv_general_dilated("patches") is conv.patches_conv_general_dilated
  assert conv.conv_general_dilated("xla") is None
  with pytest.raises(ValueError, match="conv_impl='fast'"):
    conv.conv_general_dilated("fast")


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_train_steps_match_xla(name):
  assert_same_training(three_train_steps(name, conv_impl="patches"),
                       three_train_steps(name, conv_impl="xla"), rtol=1e-4, atol=1e-5)
