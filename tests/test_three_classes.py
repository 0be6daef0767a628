"""Labels from file names: normal / bacterial / viral, trained and evaluated end to end."""

import json

import numpy as np
import pytest
from helpers import REPO_ROOT, load_config_module, tiny_config, write_image

from xray_jax import errors, train
from xray_jax.data import datasets, label_rules
from xray_jax.evaluators import evaluation


def make_three_class_dataset(root):
  rng = np.random.default_rng(3)
  for i in range(16):
    write_image(root / "train" / "NORMAL" / f"IM-{i:04d}.jpeg", 0, rng)
    write_image(root / "train" / "PNEUMONIA" / f"person{i}_bacteria_{i}.jpeg", 1, rng)
    write_image(root / "train" / "PNEUMONIA" / f"person{i}_virus_{i}.jpeg", 1, rng)
  return root


RULES = load_config_module(REPO_ROOT / "configs" / "pneumonia_3class.py").get_config(
    None).data.label_rules


def test_rules_relabel_by_path(tmp_path):
  root = make_three_class_dataset(tmp_path / "data")
  config = tiny_config(root)
  config.data.label_rules = RULES
  splits = datasets.load_splits(config.data, tmp_path / "work")
  assert splits.class_names == ("NORMAL", "BACTERIAL", "VIRAL")
  for record in splits.train + splits.val:
    expected = 2 if "_virus_" in record["path"] else int("_bacteria_" in record["path"])
    assert record["label"] == expected
  assert sorted(r["label"] for r in splits.val) == [0] * 4 + [1] * 4 + [2] * 4  # Stratified.


def test_bad_rules_and_unmatched_files_are_reported(tmp_path):
  with pytest.raises(errors.ConfigError, match="'VIRAL' is not CLASS=SUBSTRING"):
    label_rules.parse_label_rules("NORMAL=/NORMAL/,VIRAL")
  root = make_three_class_dataset(tmp_path / "data")
  (root / "train" / "PNEUMONIA" / "person99_fungal_1.jpeg").write_bytes(b"")
  config = tiny_config(root)
  config.data.label_rules = RULES
  with pytest.raises(errors.DataError, match="person99_fungal_1.jpeg: matches no rule"):
    datasets.load_splits(config.data, tmp_path / "work")


@pytest.mark.slow
def test_three_class_training_and_evaluation(tmp_path):
  root = make_three_class_dataset(tmp_path / "data")
  config = tiny_config(root, num_train_steps=4)
  config.data.label_rules = RULES
  config.loss.class_weights = "balanced"
  workdir = tmp_path / "work"
  final = train.train_and_evaluate(config, str(workdir))
  assert 0.0 <= final["val/auc"] <= 1.0
  assert json.loads((workdir / "classes.json").read_text()) == ["NORMAL", "BACTERIAL", "VIRAL"]
  report = evaluation.evaluate_checkpoint(workdir, "val", "latest", config.evaluation)
  assert set(report["at_0.5"]["per_class"]) == {"NORMAL", "BACTERIAL", "VIRAL"}
  assert "at_operating_point" not in report  # Thresholds are for two classes only.
  assert np.array(report["at_0.5"]["confusion_matrix"]).sum() == 12
  for name in ("NORMAL", "BACTERIAL", "VIRAL"):
    assert (workdir / "eval" / f"val_step4_roc_{name}.png").is_file()
