"""Test-time augmentation: the views, their average, and its use in evaluate and predict."""

import csv
import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xray_jax import classifier, errors, models, trained
from xray_jax.evaluators import evaluation, tta


def test_parse_views_names_the_config_key():
  assert tta.parse_views("none") == tta.parse_views("") == ()
  assert tta.parse_views("hflip, zoom") == ("hflip", "zoom")
  with pytest.raises(errors.ConfigError, match="config.evaluation.tta='hflip,flop'"):
    tta.parse_views("hflip,flop")
  assert tta.configured_views(ml_collections.ConfigDict({"calibration_bins": 5})) == ()


def test_views_move_the_image_as_named():
  images = np.zeros((1, 25, 25, 1), np.float32)
  images[0, 12, 3, 0] = 1.0
  (flipped,) = tta.VIEWS["hflip"](jnp.asarray(images))
  assert np.argwhere(np.asarray(flipped)[0, ..., 0]).tolist() == [[12, 21]]
  moved = [np.argwhere(np.asarray(v)[0, ..., 0] == 1.0).tolist()
           for v in tta.VIEWS["shift"](jnp.asarray(images))]
  assert moved == [[[13, 3]], [[11, 3]], [[12, 4]], [[12, 2]]]  # 4% of 25 px is 1 px.
  square = np.zeros((1, 40, 40, 1), np.float32)
  square[0, 10:30, 10:30] = 1.0
  (zoomed,) = tta.VIEWS["zoom"](jnp.asarray(square))  # x1.1: 20 px become about 22.
  assert zoomed.shape == square.shape and np.sum(np.asarray(zoomed) > 0.5) >= 21 ** 2


def test_probabilities_average_the_views():
  model = models.create_model(ml_collections.ConfigDict(dict(
      name="cnn", dtype="float32", widths=(4,), dense=(8,), dropout=0.0)), 2)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), images[:1])
  plain = models.class_probabilities(model, variables, images)
  np.testing.assert_allclose(tta.probabilities(model, variables, images), plain, rtol=1e-6)
  flipped = models.class_probabilities(model, variables, images[:, :, ::-1])
  np.testing.assert_allclose(tta.probabilities(model, variables, images, ("hflip",)),
                             (plain + flipped) / 2, rtol=1e-5)
  both = tta.probabilities(model, variables, images, ("shift", "zoom"))
  assert both.shape == (3, 2) and not np.allclose(both, plain)
  np.testing.assert_allclose(np.sum(both, axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_evaluate_and_predict_use_the_configured_views(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["evaluation"].update(tta="hflip,shift", threshold_method="youden")
  (workdir / "config.json").write_text(json.dumps(config))
  run_config = trained.load_config(workdir)
  report = evaluation.evaluate_checkpoint(workdir, "val", "latest", run_config.evaluation)
  assert report["tta"] == ["hflip", "shift"]
  rows = list(csv.DictReader((workdir / "eval" / "val_step6_predictions.csv").open()))
  probs = np.array([[float(r["prob_NORMAL"]), float(r["prob_PNEUMONIA"])] for r in rows])
  loaded = classifier.load(workdir)
  records = [{"path": r["path"], "label": 0} for r in rows]
  inputs = np.stack([loaded.preprocess(r)["image"] for r in records])
  expected = tta.probabilities(loaded.run.model, loaded.run.variables,
                               jnp.asarray(inputs), ("hflip", "shift"))
  np.testing.assert_allclose(probs, expected, atol=2e-6)
  np.testing.assert_allclose(loaded.predict_records(records), expected, rtol=1e-5,
                             atol=1e-6)
  plain = models.class_probabilities(loaded.run.model, loaded.run.variables,
                                     jnp.asarray(inputs))
  assert not np.allclose(probs, plain, atol=1e-4)
