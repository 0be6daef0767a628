"""Fine-tuning from another run: matching arrays loaded exactly, a new head fresh, the
backbone frozen or slower, and a resumed run that never goes back to its source."""

import shutil

import jax
import ml_collections
import numpy as np
import optax
import pytest
from helpers import chestmnist_config, make_dataset, tiny_config, write_findings_npz

from xray_jax import errors, finetune, models, optimizers, train, trained

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A finished 2-class run to start from."""
  root = tmp_path_factory.mktemp("source")
  train.train_and_evaluate(tiny_config(make_dataset(root / "data")), str(root / "work"))
  return root / "work"


def _three_class_config(tmp_path, source, **finetune_fields):
  data = make_dataset(tmp_path / "data3", per_class=16, classes=("A", "B", "C"))
  config = tiny_config(data)
  config.finetune.update(init_from=str(source), **finetune_fields)
  return config


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_parse_run_reads_an_optional_checkpoint_after_the_last_colon():
  assert trained.parse_run("/runs/a") == ("/runs/a", "latest")
  assert trained.parse_run("/runs/a:best") == ("/runs/a", "best")
  assert trained.parse_run("/runs/a:40") == ("/runs/a", "40")
  assert trained.parse_run("/runs/a", default="best") == ("/runs/a", "best")
  # A colon that names no checkpoint belongs to the path.
  assert trained.parse_run("C:/runs/a") == ("C:/runs/a", "latest")
  assert trained.parse_run("gs://bucket/runs/a") == ("gs://bucket/runs/a", "latest")
  assert trained.parse_run("gs://bucket/runs/a:730") == ("gs://bucket/runs/a", "730")
  assert trained.parse_run("/runs/seed:0b") == ("/runs/seed:0b", "latest")


def test_frozen_backbone_keeps_the_source_weights_and_trains_a_new_head(source_run, tmp_path):
  config = _three_class_config(tmp_path, source_run, freeze_backbone=True)
  workdir = tmp_path / "work"
  train.train_and_evaluate(config, str(workdir))
  source = _leaves(trained.load(source_run).variables["params"])
  tuned = _leaves(trained.load(workdir).variables["params"])
  head = models.head_name(trained.load(workdir).variables["params"])
  assert source.keys() == tuned.keys()
  for name, value in tuned.items():
    if head in name:
      assert value.shape != source[name].shape or not np.array_equal(value, source[name])
    else:
      np.testing.assert_array_equal(value, source[name], err_msg=name)
  assert tuned[f"['{head}']['kernel']"].shape[-1] == 3

  # Resuming a fine-tuning run resumes it: the source is not read again (it is gone).
  shutil.rmtree(source_run.parent / "moved", ignore_errors=True)
  moved = source_run.rename(source_run.parent / "moved")
  try:
    config.training.num_train_steps = 6
    train.train_and_evaluate(config, str(workdir))
    assert trained.load(workdir).step == 6
  finally:
    moved.rename(source_run)


def test_loaded_values_equal_the_sources_and_the_log_names_what_stayed_fresh(
    source_run, tmp_path, caplog):
  config = _three_class_config(tmp_path, source_run)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  model = models.create_model(config.model, 3)
  tx = optimizers.create_optimizer(config.optimizer, optax.constant_schedule(1e-3))
  fresh = train.create_train_state(model, tx, (16, 16, 1), 0, mesh)
  with caplog.at_level("INFO"):
    state = finetune.load_source(fresh, str(source_run), mesh)
  source = trained.load(source_run)
  head = models.head_name(state.params)
  for collection in ("params", "batch_stats"):
    ours = _leaves(getattr(state, collection))
    theirs = _leaves(source.variables[collection])
    initial = _leaves(getattr(fresh, collection))
    for name, value in ours.items():
      expected = initial[name] if head in name else theirs[name]
      np.testing.assert_array_equal(value, expected, err_msg=f"{collection}{name}")
  assert f"kept fresh: params/{head}/bias (3,) (source (2,))" in caplog.text


def test_a_multilabel_run_starts_a_pneumonia_run_with_a_fresh_head(tmp_path, caplog):
  source_config = chestmnist_config(tmp_path / "findings.npz")
  write_findings_npz(tmp_path / "findings.npz", sizes=(("train", 64), ("val", 16)))
  pneumonia_config = tiny_config(make_dataset(tmp_path / "data"))
  source_config.data.image_size = pneumonia_config.data.image_size
  source_config.model = ml_collections.ConfigDict(pneumonia_config.model.to_dict())
  source_config.training.update(num_train_steps=4, eval_every_steps=4,
                                checkpoint_every_steps=4)
  train.train_and_evaluate(source_config, str(tmp_path / "findings"))

  pneumonia_config.finetune.update(init_from=str(tmp_path / "findings"), freeze_backbone=True)
  with caplog.at_level("INFO"):
    train.train_and_evaluate(pneumonia_config, str(tmp_path / "pneumonia"))
  source = trained.load(tmp_path / "findings")
  head = models.head_name(source.variables["params"])
  assert source.variables["params"][head]["bias"].shape == (4,)  # One logit per finding.
  assert f"kept fresh: params/{head}/bias (2,) (source (4,))" in caplog.text
  tuned = _leaves(trained.load(tmp_path / "pneumonia").variables["params"])
  for name, value in _leaves(source.variables["params"]).items():
    if head not in name:  # The frozen backbone is the multilabel run's.
      np.testing.assert_array_equal(tuned[name], value, err_msg=name)
  assert tuned[f"['{head}']['kernel']"].shape[-1] == 2


def test_a_source_that_fits_nothing_or_is_missing_is_a_config_error(source_run, tmp_path):
  config = _three_class_config(tmp_path, tmp_path / "nowhere")
  with pytest.raises(errors.ConfigError, match="config.finetune.init_from=.*nowhere"):
    train.train_and_evaluate(config, str(tmp_path / "work"))


def test_a_lower_backbone_rate_scales_the_backbone_updates_only():
  params = {"Conv_0": {"kernel": np.ones((3, 3, 1, 2))}, "Dense_0": {"kernel": np.ones((2, 4))},
            "Dense_1": {"kernel": np.ones((4, 2)), "bias": np.ones(2)}}
  grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
  opt = ml_collections.ConfigDict(dict(name="sgd", weight_decay=0.0, momentum=0.0,
                                       nesterov=False, grad_clip_norm=0.0))

  def updates(**fields):
    tune = ml_collections.ConfigDict(
        {"freeze_backbone": False, "backbone_learning_rate_scale": 1.0, **fields})
    tx = optimizers.create_optimizer(opt, optax.constant_schedule(0.1), tune)
    return tx.update(grads, tx.init(params), params)[0]

  full, slow, frozen = updates(), updates(backbone_learning_rate_scale=0.25), updates(
      freeze_backbone=True)
  for module in params:
    for name in params[module]:
      factor = 1.0 if module == "Dense_1" else 0.25
      np.testing.assert_allclose(slow[module][name], factor * full[module][name])
      expected = full[module][name] if module == "Dense_1" else 0.0
      np.testing.assert_allclose(frozen[module][name], expected)
