"""Per-image intensity standardization, and that training, evaluation and predict share it."""

import json
import shutil

import ml_collections
import numpy as np
import PIL.Image
import pytest
from helpers import no_augment, write_image

from xray_jax import classifier, inference, input_pipeline, sharding
from xray_jax.data import intensity


def _low_contrast(size: int = 64) -> np.ndarray:
  rng = np.random.default_rng(0)
  ramp = np.linspace(0.4, 0.5, size, dtype=np.float32)[None, :].repeat(size, axis=0)
  return (ramp + rng.uniform(0, 0.02, (size, size))).astype(np.float32)


def test_none_is_the_identity_and_bad_methods_are_refused():
  image = _low_contrast()
  assert intensity.standardize(image, "none") is image
  with pytest.raises(ValueError, match="'sharpen'"):
    intensity.standardize(image, "sharpen")


@pytest.mark.parametrize("method", ["equalize", "clahe"])
def test_standardization_spreads_contrast_and_undoes_exposure(method):
  image = _low_contrast()
  out = intensity.standardize(image, method)
  assert out.dtype == np.float32 and out.shape == image.shape
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert out.std() > 3 * image.std()
  # Two exposures of one image end up much closer than they started.
  darker = image ** 1.8
  before = np.abs(image - darker).mean()
  after = np.abs(out - intensity.standardize(darker, method)).mean()
  assert after < 0.3 * before, (before, after)


@pytest.mark.slow
def test_training_evaluation_and_predict_apply_the_same_standardization(
    trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["data"].update(intensity="clahe", clahe_clip_limit=0.02)
  (workdir / "config.json").write_text(json.dumps(config))
  data_config = ml_collections.ConfigDict(config["data"])
  path = tmp_path / "x.png"
  write_image(path, 1, np.random.default_rng(3))
  record = {"path": str(path), "label": 1}
  preprocess = input_pipeline.Preprocess.from_config(data_config)
  raw = PIL.Image.open(path).convert("L").resize((16, 16), PIL.Image.Resampling.BILINEAR)
  expected = preprocess.normalize(intensity.standardize(
      np.asarray(raw, np.float32) / 255, "clahe", 0.02))
  np.testing.assert_allclose(preprocess(record)["image"], expected, atol=1e-6)
  # Training (augmentation off) and evaluation batches hold that same input.
  trained_input = preprocess(record, no_augment(), np.random.default_rng(0))["image"]
  np.testing.assert_allclose(trained_input, expected, atol=1e-6)
  # The classifier (files and arrays) preprocesses with it and agrees with evaluation.
  loaded = classifier.load(workdir)
  assert loaded.preprocess == preprocess
  run = loaded.run
  probs, _ = inference.Evaluator(run.model, [record], run.config.data, 8,
                                 sharding.make_mesh()).predict(run.variables)
  np.testing.assert_allclose(loaded([np.asarray(PIL.Image.open(path))]), probs, atol=1e-6)
