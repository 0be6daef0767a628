"""Every registered model: output shape and dtype, train/eval modes."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from xray_jax import config_args, errors, models

SMALL = {"cnn": dict(widths=(4, 8), dense=(8,)), "resnet": dict(width=4),
         "densenet": dict(width=4, growth_rate=4, block_sizes=(1, 1))}


def small_config(name: str, dtype: str = "float32") -> ml_collections.ConfigDict:
  fields = SMALL[config_args.model_family(name)]
  return ml_collections.ConfigDict(dict(name=name, dtype=dtype, **fields))


@pytest.mark.parametrize("name, channels", [
    *((name, 1) for name in sorted(models.MODELS)), ("cnn", 3), ("resnet18", 3)])
def test_logits_shape_and_dtype(name, channels):
  model = models.create_model(small_config(name), num_classes=3)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, channels))
  variables = model.init(jax.random.PRNGKey(1), images, train=False)
  logits = model.apply(variables, images, train=False)
  assert logits.shape == (2, 3)
  assert logits.dtype == jnp.float32
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.PRNGKey(2)})
  assert logits.shape == (2, 3)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  assert any(jax.tree.leaves(changed)), "training mode must update BatchNorm statistics"


@pytest.mark.parametrize("name", ["cnn", "resnet18", "densenet121"])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  model = models.create_model(small_config(name, "bfloat16"), num_classes=2)
  images = jnp.ones((2, 32, 32, 1))
  variables = model.init(jax.random.PRNGKey(0), images)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert model.apply(variables, images).dtype == jnp.float32


@pytest.mark.parametrize("pooling", ["avg", "max", "flatten"])
def test_cnn_pooling_variants(pooling):
  config = small_config("cnn")
  config.pooling = pooling
  model = models.create_model(config, num_classes=2)
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 1)))
  dense_in = variables["params"]["Dense_0"]["kernel"].shape[0]
  assert dense_in == (8 * 8 * 8 if pooling == "flatten" else 8)


def test_cnn_dropout_is_random_in_training_only():
  model = models.create_model(small_config("cnn"), num_classes=2)
  images = jnp.ones((4, 32, 32, 1))
  variables = model.init(jax.random.PRNGKey(0), images)
  run = lambda key: model.apply(variables, images, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.PRNGKey(key)})[0]
  assert not jnp.allclose(run(1), run(2))
  assert jnp.allclose(model.apply(variables, images), model.apply(variables, images))


def test_config_field_that_does_not_fit_the_model():
  config = small_config("resnet18")
  config.widths = (4, 8)
  with pytest.raises(errors.ConfigError, match="config.model does not fit 'resnet18'"):
    models.create_model(config, 2)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "densenet121"])
def test_batch_norm_momentum_comes_from_the_config(name):
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 1)) + 3.0

  def running_means(momentum):
    config = small_config(name)
    config.batch_norm_momentum = momentum
    model = models.create_model(config, num_classes=2)
    variables = model.init(jax.random.PRNGKey(1), images, train=False)
    _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.PRNGKey(2)})
    return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(updates)
            if path[-1].key == "mean"]

  # In training, BatchNorm normalizes with the batch's statistics, so every layer sees the
  # same batch whatever the momentum; a running mean starts at 0 and moves by (1 - m).
  for slow, fast in zip(running_means(0.75), running_means(0.25), strict=True):
    assert jnp.allclose(fast, 3.0 * slow, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stem, size, kernel, features", [
    ("imagenet", 32, 7, 1), ("small", 32, 3, 4), ("auto", 16, 3, 2), ("auto", 28, 7, 1),
    ("auto", 64, 7, 2), ("fast", 64, 4, 1), ("fast", 224, 4, 4), ("imagenet", 128, 7, 4)])
def test_resnet_stem_sets_the_feature_map_size(stem, size, kernel, features):
  """The small stem keeps full resolution into the stages (stride 1, no pool), so small
  inputs end in a feature map larger than 1x1; auto chooses it below 28 px. The fast stem
  halves the size once more: 224 px ends as 128 px does with the ImageNet stem."""
  config = small_config("resnet18")
  config.stem = stem
  model = models.create_model(config, num_classes=2)
  images = jnp.zeros((1, size, size, 1))
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  assert variables["params"]["Conv_0"]["kernel"].shape[:2] == (kernel, kernel)
  _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
  feature_map = state["intermediates"]["features"][0]
  assert feature_map.shape[1:3] == (features, features)


def test_resnet_without_a_stem_field_keeps_the_imagenet_stem():
  """Runs saved before model.stem existed were trained with the ImageNet stem."""
  model = models.create_model(small_config("resnet18"), num_classes=2)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), train=False)
  assert variables["params"]["Conv_0"]["kernel"].shape[:2] == (7, 7)
