"""DenseNet-121: its parameter count and feature maps, and a tiny one through the
trainer and into fine-tuning for other classes."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO_ROOT, load_config_module, make_dataset, tiny_config

from xray_jax import finetune, models, optimizers, train, trained

PNEUMONIA = load_config_module(REPO_ROOT / "configs" / "pneumonia.py")
TINY = dict(width=8, growth_rate=4, block_sizes=(1, 1))  # Stem, a block, a transition, a block.


def densenet_config(**fields):
  config = PNEUMONIA.model_config("densenet121")
  config.update(fields)
  return config


def _init_shapes(model, size: int, channels: int = 1):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, channels)))


# torchvision's DenseNet-121 (3-channel input, 1000 classes) has 7,978,856 parameters. With
# one input channel the stem loses 7 x 7 x 2 x 64 = 6,272 weights, and the head holds
# 1024 x N + N instead of 1,025,000: 6,949,634 for 2 classes, 6,961,934 for 14.
@pytest.mark.parametrize("num_classes, expected", [(2, 6_949_634), (14, 6_961_934)])
def test_densenet121_parameter_count(num_classes, expected):
  model = models.create_model(densenet_config(), num_classes)
  params = _init_shapes(model, 224)["params"]
  assert sum(math.prod(p.shape) for p in jax.tree.leaves(params)) == expected
  assert params[models.head_name(params)]["kernel"].shape == (1024, num_classes)


@pytest.mark.parametrize("stem, size, features", [
    ("imagenet", 224, 7), ("fast", 224, 4), ("auto", 28, 1), ("auto", 16, 2)])
def test_transitions_halve_the_feature_map_and_round_odd_sizes_up(stem, size, features):
  """The stem takes 224 px to 56 (fast: 28), each of the 3 transitions halves it; odd sizes
  round up, so a 28 px input (7, 4, 2, 1) keeps a map; auto picks the small stem below 28."""
  model = models.create_model(densenet_config(**{**TINY, "block_sizes": (1,) * 4}, stem=stem), 2)
  images = jnp.zeros((1, size, size, 1))
  variables = _init_shapes(model, size)
  _, state = jax.eval_shape(
      lambda v: model.apply(v, images, mutable=["intermediates"]), variables)
  # 8 stem channels; each layer adds 4, each transition keeps half: 12, 6 + 4, 5 + 4, 4 + 4.
  assert state["intermediates"]["features"][0].shape == (1, features, features, 8)


@pytest.mark.parametrize("num_classes", [2, 14])
def test_tiny_densenet_logits(num_classes):
  model = models.create_model(densenet_config(**TINY), num_classes)
  images = jax.random.normal(jax.random.key(0), (3, 32, 32, 1))
  variables = model.init(jax.random.key(1), images)
  logits = model.apply(variables, images)
  assert logits.shape == (3, num_classes) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_tiny_densenet_trains_and_fine_tunes_with_a_fresh_head(tmp_path):
  config = tiny_config(make_dataset(tmp_path / "data"))
  config.model = densenet_config(**TINY)
  source = tmp_path / "source"
  train.train_and_evaluate(config, str(source))
  records = [json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert trained.load(source).step == 4

  # Three classes from the 2-class run: all but the head loaded, the head kept fresh.
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  model = models.create_model(config.model, 3)
  tx = optimizers.create_optimizer(config.optimizer, optax.constant_schedule(1e-3))
  fresh = train.create_train_state(model, tx, (16, 16, 1), 0, mesh)
  state = finetune.load_source(fresh, str(source), mesh)
  head = models.head_name(state.params)
  assert head == "Dense_0"
  saved = trained.load(source).variables
  for collection in ("params", "batch_stats"):
    ours, theirs = _leaves(getattr(state, collection)), _leaves(saved[collection])
    initial = _leaves(getattr(fresh, collection))
    for name, value in ours.items():
      expected = initial[name] if head in name else theirs[name]
      np.testing.assert_array_equal(value, expected, err_msg=f"{collection}{name}")
  assert state.params[head]["kernel"].shape[-1] == 3
