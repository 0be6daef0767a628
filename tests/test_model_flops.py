"""Model FLOPs counted on the jaxpr, checked against XLA's cost analysis on the CPU."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from helpers import tiny_config

from xray_jax import models, sharding
from xray_jax.speed import model_flops, suite


def _xla_flops(fn, *args) -> float:
  """FLOPs by XLA's cost analysis of the compiled CPU program (it counts elementwise work)."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, "SAME", 1, 1), (2, "SAME", 1, 1), (2, "VALID", 1, 1), (1, "SAME", 2, 1),
    (2, ((3, 3), (3, 3)), 1, 1), (1, "SAME", 1, 4)])
def test_convolutions_and_their_gradients_count_as_xla_does(stride, padding, dilation, groups):
  x = jax.random.normal(jax.random.key(0), (2, 15, 13, 8))
  w = jax.random.normal(jax.random.key(1), (7 if stride == 2 else 3, 3, 8 // groups, 12))

  def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)

  dy = conv(x, w)
  input_gradient = jax.vjp(lambda x: conv(x, w), x)[1]  # The backward pass alone.
  filter_gradient = jax.vjp(lambda w: conv(x, w), w)[1]
  assert model_flops.model_flops(conv, x, w) == pytest.approx(_xla_flops(conv, x, w))
  for gradient in (input_gradient, filter_gradient):
    assert model_flops.model_flops(gradient, dy) == pytest.approx(_xla_flops(gradient, dy))


def test_matmuls_count_two_flops_per_multiply_add():
  a, b = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 11))
  assert model_flops.model_flops(jnp.matmul, a, b) == 2 * 3 * 5 * 7 * 11
  assert model_flops.model_flops(lambda a: a + 1.0, a) == 0  # Elementwise: not counted.


def test_scans_count_every_iteration_and_conditionals_their_costliest_branch():
  m = jnp.ones((4, 4))
  scanned = lambda m: jax.lax.scan(lambda c, _: (c @ m, None), m, length=5)[0]
  assert model_flops.model_flops(scanned, m) == 5 * 2 * 4**3
  branches = lambda p, m: jax.lax.cond(p, lambda m: m @ m @ m, lambda m: m @ m, m)
  assert model_flops.model_flops(branches, True, m) == 2 * 2 * 4**3


def test_train_step_counts_xla_flops_less_elementwise_work(dataset_dir, monkeypatch):
  make_mesh = sharding.make_mesh  # One device: XLA's count is per device.
  monkeypatch.setattr(sharding, "make_mesh", lambda: make_mesh(jax.devices()[:1]))
  bench = suite.StepBenchmark(tiny_config(dataset_dir), num_classes=2)
  analysis = bench.step.cost_analysis()
  xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
  # Elementwise work is about a quarter of this tiny model's; the backward pass, two thirds
  # of its matmul and convolution FLOPs.
  assert 0.6 * xla < bench.flops_per_step < xla


def _densenet121_multiply_adds(channels: int, num_classes: int, taps_on_padding: bool) -> int:
  """Multiply-adds of DenseNet-121 at 224 px, counted by hand. Without the taps on padding, a
  3x3 convolution (stride 1, SAME) on an n x n map has (3n - 2)^2 (output, tap) pairs, and
  the 7x7 stride-2 stem 778^2 (6 of each row's 112 x 7 on padding)."""
  taps_3x3 = (lambda n: 9 * n * n) if taps_on_padding else (lambda n: (3 * n - 2) ** 2)
  total = (112 * 7 if taps_on_padding else 778) ** 2 * channels * 64
  width, n = 64, 56
  for block, num_layers in enumerate((6, 12, 24, 16)):
    for layer in range(num_layers):
      total += n * n * (width + 32 * layer) * 128 + taps_3x3(n) * 128 * 32
    width += 32 * num_layers
    if block < 3:
      total += n * n * width * (width // 2)
      width, n = width // 2, n // 2
  return total + width * num_classes


def test_densenet121_flops_match_the_hand_count():
  """model_flops counts 2 FLOPs a multiply-add, none on padding. With the taps on padding,
  the hand count is torchvision's published 2.83 G multiply-adds (3 channels, 1000 classes)."""
  assert round(_densenet121_multiply_adds(3, 1000, taps_on_padding=True) / 1e9, 2) == 2.83
  model = models.create_model(ml_collections.ConfigDict(dict(
      name="densenet121", dtype="float32")), 1000)
  images = jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  flops = model_flops.model_flops(lambda v, x: model.apply(v, x), variables, images)
  assert flops == 2 * _densenet121_multiply_adds(3, 1000, taps_on_padding=False)
