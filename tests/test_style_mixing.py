"""MixStyle: feature statistics blended between images in training, nothing in inference."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xray_jax import models, sharding
from xray_jax.models import common


def _features(batch: int = 8) -> jax.Array:
  """Feature maps [batch, 6, 6, 4] whose images differ in per-channel mean and spread."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  content = jax.random.normal(keys[0], (batch, 6, 6, 4))
  scale = jax.random.uniform(keys[1], (batch, 1, 1, 4), minval=0.5, maxval=3.0)
  shift = jax.random.normal(keys[2], (batch, 1, 1, 4)) * 4
  return content * scale + shift


def _statistics(x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float64)
  return x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2)) + 1e-6)


def test_mixstyle_blends_each_images_statistics_with_another_images():
  x = _features()
  out = common.MixStyle(probability=1.0, alpha=0.3).apply(
      {}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  mean, std = _statistics(x)
  out_mean, out_std = _statistics(out)
  normalized = lambda v, m, s: (np.asarray(v) - m[:, None, None]) / s[:, None, None]
  np.testing.assert_allclose(normalized(out, out_mean, out_std), normalized(x, mean, std),
                             atol=2e-3)
  changed = 0
  for i in range(len(x)):
    # Image i's new statistics: w * its own + (1 - w) * those of one partner j, one w for
    # every channel and for both the mean and the spread.
    fits = []
    for j in range(len(x)):
      if j == i:
        fits.append(np.allclose(out_mean[i], mean[i], atol=1e-4))
        continue
      weights = np.concatenate([(out_mean[i] - mean[j]) / (mean[i] - mean[j]),
                                (out_std[i] - std[j]) / (std[i] - std[j])])
      fits.append(np.ptp(weights) < 1e-3 and -1e-4 <= weights.mean() <= 1 + 1e-4)
    assert any(fits), i
    changed += not np.allclose(out_mean[i], mean[i], atol=1e-3)
  assert changed >= len(x) // 2


def test_mixstyle_passes_features_through_in_inference_or_at_probability_zero():
  x = _features()
  rngs = {"dropout": jax.random.PRNGKey(1)}
  assert jnp.array_equal(common.MixStyle(1.0).apply({}, x, train=False), x)
  assert jnp.array_equal(common.MixStyle(0.0).apply({}, x, train=True, rngs=rngs), x)
  applied = [not jnp.array_equal(common.MixStyle(0.5).apply(
      {}, x, train=True, rngs={"dropout": jax.random.PRNGKey(k)}), x) for k in range(40)]
  assert 10 <= sum(applied) <= 30  # A coin per batch: about half of them.


def test_mixstyle_statistics_pass_no_gradient():
  x = _features()
  apply = lambda v: common.MixStyle(1.0).apply({}, v, train=True,
                                               rngs={"dropout": jax.random.PRNGKey(1)})
  # Through normalized content only: the gradient of the sum of a feature map scaled by
  # fixed statistics is std_new / std_own at every pixel.
  grad = jax.grad(lambda v: apply(v).sum())(x)
  _, std = _statistics(x)
  _, out_std = _statistics(apply(x))
  np.testing.assert_allclose(np.asarray(grad), np.broadcast_to(
      (out_std / std)[:, None, None], x.shape), rtol=1e-4)


@pytest.mark.parametrize("name, fields", [
    ("cnn", dict(widths=(4, 8, 8), dense=(8,), dropout=0.0)),
    ("resnet18", dict(width=4)),
    ("densenet121", dict(width=4, growth_rate=4, block_sizes=(1, 1, 1))),
])
def test_style_mixing_changes_training_only_and_no_variables(name, fields):
  def build(probability):
    return models.create_model(ml_collections.ConfigDict(dict(
        name=name, dtype="float32", style_mixing=probability, **fields)), 2)
  images = _features(8)[..., :1]
  images = jax.image.resize(images, (8, 32, 32, 1), "linear")
  plain, mixing = build(0.0), build(1.0)
  variables = plain.init(jax.random.PRNGKey(0), images)
  mixing_variables = mixing.init(jax.random.PRNGKey(0), images)
  assert jax.tree.structure(variables) == jax.tree.structure(mixing_variables)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(mixing_variables), strict=True):
    assert jnp.array_equal(a, b)
  assert jnp.array_equal(plain.apply(variables, images), mixing.apply(variables, images))
  train = lambda model: model.apply(variables, images, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.PRNGKey(3)})[0]
  assert not jnp.allclose(train(plain), train(mixing))


def test_style_mixing_runs_on_a_batch_sharded_over_every_device():
  model = models.create_model(ml_collections.ConfigDict(dict(
      name="resnet18", dtype="float32", width=4, style_mixing=1.0)), 2)
  images = jax.image.resize(_features(8)[..., :1], (8, 32, 32, 1), "linear")
  variables = model.init(jax.random.PRNGKey(0), images)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": jax.random.PRNGKey(3)})[0])
  mesh = sharding.make_mesh()
  sharded = sharding.to_global_batch({"image": np.asarray(images)}, mesh)["image"]
  assert len(sharded.sharding.device_set) == len(jax.devices()) == 8
  np.testing.assert_allclose(apply(variables, sharded), apply(variables, images),
                             rtol=1e-4, atol=1e-5)
