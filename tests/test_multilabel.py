"""The multilabel task: masked binary cross-entropy, uncertainty policies, positive weights,
sigmoid probabilities, validation metrics, ChestMNIST-style npz files, and training end to end
on generated findings."""

import json
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import (
  FINDINGS,
  REPO_ROOT,
  chestmnist_config,
  cpu_env,
  findings_trainer_command,
  findings_training_config,
  write_findings_npz,
)

from xray_jax import (
  config_checks,
  errors,
  inference,
  labels,
  losses,
  models,
  optimizers,
  sharding,
  tasks,
  train,
  trained,
)
from xray_jax.data import datasets
from xray_jax.evaluators import metrics, tta

NAN = np.nan
LOGITS = np.array([[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0], [0.7, 0.2, 1.0], [-1.2, -0.4, 3.0]],
                  np.float32)
LABELS = np.array([[1, 0, NAN], [0, NAN, 1], [NAN, 1, 0], [1, -1, 0]], np.float32)


def hand_bce(logits, labels, smoothing=0.0, positive_weights=(1.0, 1.0, 1.0)) -> float:
  """Mean binary cross-entropy over the entries labelled 0 or 1, written out in numpy."""
  total, count = 0.0, 0
  for row_logits, row_labels in zip(logits, labels, strict=True):
    for k, (x, y) in enumerate(zip(row_logits, row_labels, strict=True)):
      if y not in (0.0, 1.0):
        continue
      p, t = 1 / (1 + np.exp(-x)), y * (1 - smoothing) + smoothing / 2
      weight = positive_weights[k] if y == 1 else 1.0
      total += -weight * (t * np.log(p) + (1 - t) * np.log(1 - p))
      count += 1
  return total / count


def loss_config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"name": "cross_entropy", "focal_gamma": 2.0,
                                    "label_smoothing": 0.0, "class_weights": "none", **fields})


def test_missing_labels_add_no_loss_and_no_gradient():
  loss = jax.jit(losses.masked_mean_loss(losses.binary_cross_entropy))
  assert float(loss(LOGITS, LABELS)) == pytest.approx(hand_bce(LOGITS, LABELS), rel=1e-6)
  grad = np.asarray(jax.grad(loss)(LOGITS, LABELS))
  present = labels.present(LABELS)
  assert present.sum() == 8  # NaN and -1 are both missing.
  assert np.all(grad[~present] == 0.0) and np.all(np.isfinite(grad))
  # d/dx of the mean over the 8 present entries: (sigmoid(x) - y) / 8.
  expected = (1 / (1 + np.exp(-LOGITS)) - np.nan_to_num(LABELS)) / 8
  np.testing.assert_allclose(grad[present], expected[present], rtol=1e-5)
  # The missing entries' logits do not matter at all.
  moved = np.where(present, LOGITS, 100.0).astype(np.float32)
  assert float(loss(moved, LABELS)) == pytest.approx(float(loss(LOGITS, LABELS)), rel=1e-7)


def test_smoothing_and_positive_weights_match_a_hand_computation():
  weights = np.array([2.0, 0.5, 3.0], np.float32)
  loss = losses.create_multilabel_loss(loss_config(label_smoothing=0.2, class_weights="2,0.5,3"),
                                       LABELS, 3)
  assert float(loss(LOGITS, LABELS)) == pytest.approx(
      hand_bce(LOGITS, LABELS, 0.2, weights), rel=1e-6)
  grad = np.asarray(jax.grad(loss)(LOGITS, LABELS))
  assert np.all(grad[~labels.present(LABELS)] == 0.0)


def test_focal_is_the_sigmoid_focal_loss_on_present_labels():
  focal = losses.create_multilabel_loss(loss_config(name="focal", focal_gamma=2.0), LABELS, 3)
  p = 1 / (1 + np.exp(-LOGITS.astype(np.float64)))
  terms = np.where(LABELS == 1, -(1 - p) ** 2 * np.log(p), -(p ** 2) * np.log(1 - p))
  expected = terms[labels.present(LABELS)].mean()
  assert float(focal(LOGITS, LABELS)) == pytest.approx(expected, rel=1e-5)
  assert np.all(np.asarray(jax.grad(focal)(LOGITS, LABELS))[~labels.present(LABELS)] == 0.0)
  plain = losses.create_multilabel_loss(loss_config(name="focal", focal_gamma=0.0), LABELS, 3)
  assert float(plain(LOGITS, LABELS)) == pytest.approx(hand_bce(LOGITS, LABELS), rel=1e-6)
  assert set(losses.MULTILABEL_LOSSES) == set(losses.LOSSES)  # config.loss.name serves both.


def test_uncertainty_policies_map_minus_one():
  raw = np.array([1.0, 0.0, -1.0, NAN], np.float32)
  expected = {"ignore": [1, 0, NAN, NAN], "negative": [1, 0, 0, NAN],
              "positive": [1, 0, 1, NAN]}
  for policy, want in expected.items():
    got = labels.apply_uncertainty(raw, policy)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(want, np.float32))
  record = {"path": "x", "label": raw}
  assert tasks.MULTILABEL.relabelled([record], "positive")[0]["label"][2] == 1.0
  assert tasks.SINGLE_LABEL.relabelled([{"path": "x", "label": 1}], "positive")[0]["label"] == 1


def test_balanced_positive_weights_are_negatives_per_positive():
  train_labels = np.array([[1, 0, NAN], [0, 0, 1], [1, -1, 0], [0, 0, 0], [0, NAN, 0]],
                          np.float32)
  # Finding 0: 2 positives, 3 negatives; 1: none positive, 3 negatives (the -1 and NaN do
  # not count); 2: 1 positive, 3 negatives.
  np.testing.assert_allclose(losses.resolve_positive_weights("balanced", train_labels, 3),
                             [3 / 2, 3 / 1, 3 / 1])
  assert losses.resolve_positive_weights("none", train_labels, 3) is None
  np.testing.assert_allclose(losses.resolve_positive_weights("1,2,4", train_labels, 3),
                             [1, 2, 4])
  with pytest.raises(errors.ConfigError, match="config.loss.class_weights='1,2'"):
    losses.resolve_positive_weights("1,2", train_labels, 3)


def _model_and_state(mesh, outputs: int):
  model = models.create_model(ml_collections.ConfigDict(dict(
      name="cnn", dtype="float32", widths=(4, 8), dense=(8,), dropout=0.0)), outputs)
  schedule = optax.constant_schedule(1e-2)
  tx = optimizers.create_optimizer(ml_collections.ConfigDict(dict(
      name="adamw", weight_decay=1e-4, grad_clip_norm=1.0)), schedule)
  return model, schedule, train.create_train_state(model, tx, (16, 16, 1), 0, mesh)


def test_mixup_of_the_losses_is_mixup_of_the_labels():
  mesh = sharding.make_mesh(jax.devices()[:1])
  _, schedule, state = _model_and_state(mesh, 3)
  rng = np.random.default_rng(0)
  batch = sharding.to_global_batch({
      "image": rng.normal(size=(8, 16, 16, 1)).astype(np.float32),
      "label": (rng.random((8, 3)) < 0.5).astype(np.float32)}, mesh)

  @jax.jit
  def on_mixed_labels(state, batch):  # The step's mix weight and logits, the labels mixed.
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    mix = jax.random.beta(jax.random.fold_in(dropout_rng, 1), 0.4, 0.4)
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        mix * batch["image"] + (1 - mix) * batch["image"][::-1], train=True,
        rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    mixed_labels = mix * batch["label"] + (1 - mix) * batch["label"][::-1]
    return mix, jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mixed_labels))

  mix, expected = on_mixed_labels(state, batch)
  step = train.make_train_step(mesh, schedule=schedule,
                               loss=losses.masked_mean_loss(losses.binary_cross_entropy),
                               accuracy=tasks.finding_accuracy, mixup_alpha=0.4)
  _, metrics = step(state, batch)
  assert 0.05 < float(mix) < 0.95
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_finding_accuracy_counts_present_labels_only():
  accuracy = tasks.finding_accuracy(jnp.asarray(LOGITS), jnp.asarray(LABELS))
  # Present: (2, 1) right, (-1, 0) right, (-0.3, 0) right, (-2, 1) wrong, (0.2, 1) right,
  # (1, 0) wrong, (-1.2, 1) wrong, (3, 0) wrong.
  assert float(accuracy) == pytest.approx(4 / 8)


def test_summary_macro_micro_and_per_finding():
  probs = np.array([[0.9, 0.2, 0.5], [0.3, 0.8, 0.6], [0.6, 0.1, 0.4], [0.2, 0.7, 0.7],
                    [0.8, 0.4, 0.1]])
  truth = np.array([[1, 0, 1], [0, 1, NAN], [0, -1, 1], [0, 1, 1], [1, NAN, 1]])
  found = metrics.summarize_findings(probs, truth, ("Pleural Effusion", "mass", "edema"))
  # Finding 0: positives 0.9, 0.8 above every negative: 1. Finding 1: present rows 0, 1, 3:
  # negatives {0.2}, positives {0.8, 0.7}: 1. Finding 2: all present labels positive: NaN.
  assert found["auc_Pleural_Effusion"] == 1.0 and found["auc_mass"] == 1.0
  assert np.isnan(found["auc_edema"]) and found["auc"] == 1.0
  present = labels.present(truth)
  scores, positive = probs[present], truth[present] == 1
  assert found["accuracy"] == pytest.approx(np.mean((scores >= 0.5) == positive))
  assert found["nll"] == pytest.approx(-np.mean(np.where(positive, np.log(scores),
                                                         np.log(1 - scores))))
  pairs = [(p, n) for p in scores[positive] for n in scores[~positive]]
  assert found["auc_micro"] == pytest.approx(
      np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs]))
  assert found["num_examples"] == 5


def test_probabilities_are_sigmoids_per_finding():
  model = models.create_model(ml_collections.ConfigDict(dict(
      name="cnn", dtype="float32", widths=(4,), dense=(8,), dropout=0.0)), 3)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), images[:1])
  logits = model.apply(variables, images, train=False)
  probs = models.class_probabilities(model, variables, images, tasks.MULTILABEL)
  np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), rtol=1e-6)
  flipped = models.class_probabilities(model, variables, images[:, :, ::-1], tasks.MULTILABEL)
  np.testing.assert_allclose(tta.probabilities(model, variables, images, ("hflip",),
                                               tasks.MULTILABEL), (probs + flipped) / 2,
                             rtol=1e-5)
  assert not np.allclose(np.sum(probs, axis=1), 1.0)  # Not a softmax.


def test_npz_findings_become_float_label_vectors(tmp_path):
  arrays = write_findings_npz(tmp_path / "f.npz", (("train", 24), ("test", 8)))
  config = chestmnist_config(tmp_path / "f.npz")
  config.data.val_fraction = 0.25
  found = datasets.load_splits(config.data, tmp_path / "work")
  assert found.class_names == FINDINGS
  assert len(found.train) + len(found.val) == 24 and len(found.test) == 8
  record = found.test[3]
  assert record["label"].dtype == np.float32 and record["label"].shape == (4,)
  np.testing.assert_array_equal(record["label"], arrays["test_labels"][3])
  # Validation carved from train is stratified by whether any finding is present.
  any_found = [bool(np.any(r["label"] == 1)) for r in found.val]
  assert True in any_found and False in any_found
  tasks.MULTILABEL.check_labels(found.train, found.class_names)
  with pytest.raises(errors.DataError, match="config.task='single_label' expects one class"):
    tasks.SINGLE_LABEL.check_labels(found.train, found.class_names)
  with pytest.raises(errors.DataError, match="config.task='multilabel' expects a vector of 4"):
    tasks.MULTILABEL.check_labels([{"path": "a.png", "label": 1}], found.class_names)


@pytest.mark.parametrize("change, message", [
    (lambda a: a["train_labels"][:, :3], r"train_labels of shape \(12, 3\).*has 4"),
    (lambda a: np.where(np.isnan(a["train_labels"]), 2.0, a["train_labels"]),
     r"train_labels hold 2.0; findings are 1 \(present\)"),
])
def test_npz_findings_that_do_not_fit_are_reported(tmp_path, change, message):
  arrays = write_findings_npz(tmp_path / "f.npz", (("train", 12),))
  np.savez(tmp_path / "f.npz", **{**arrays, "train_labels": change(arrays)})
  with pytest.raises(errors.DataError, match=message):
    datasets.load_splits(chestmnist_config(tmp_path / "f.npz").data, tmp_path / "work")


@pytest.mark.parametrize("key, value, message", [
    ("task", "multiclass", "config.task='multiclass': expected single_label or multilabel"),
    ("loss.uncertain", "zero", "config.loss.uncertain='zero': expected ignore or negative"),
    ("data.balanced_sampling", True,
     "config.data.balanced_sampling=True: expected False with config.task='multilabel'"),
])
def test_config_checks_name_the_multilabel_keys(tmp_path, key, value, message):
  config = chestmnist_config(tmp_path / "f.npz")
  config_checks.check_config(config)
  section, _, field = key.rpartition(".")
  (config[section] if section else config)[field] = value
  with pytest.raises(errors.ConfigError, match=message.replace(".", r"\.")):
    config_checks.check_config(config)


def test_single_label_training_refuses_label_vectors(tmp_path):
  write_findings_npz(tmp_path / "f.npz", (("train", 16), ("val", 8)))
  config = chestmnist_config(tmp_path / "f.npz")
  config.task = "single_label"
  with pytest.raises(errors.DataError, match="label vectors of findings need config.task"):
    train.train_and_evaluate(config, str(tmp_path / "work"))


def _metrics_lines(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_learns_each_finding(tmp_path):
  """200 steps on 8 CPU devices: each finding's ROC AUC on held-out images is near 1."""
  arrays = write_findings_npz(tmp_path / "f.npz")
  config = findings_training_config(tmp_path / "f.npz")
  workdir = tmp_path / "work"
  assert len(jax.devices()) == 8
  final = train.train_and_evaluate(config, str(workdir))

  last = _metrics_lines(workdir)[-1]
  assert last["step"] == 200 and last["val/auc"] == final["val/auc"] > 0.95
  assert {f"test/auc_{name}" for name in FINDINGS} <= set(last)
  # Held-out images, scored outside the trainer from the saved checkpoint.
  mesh = sharding.make_mesh()
  step, variables = trained.load_variables(workdir, "latest", mesh)
  model = models.create_model(config.model, len(FINDINGS))
  test_records = [{"path": f"test/{i}", "image": image, "label": label} for i, (image, label)
                  in enumerate(zip(arrays["test_images"], arrays["test_labels"], strict=True))]
  probs, got_labels = inference.Predictor(model, config.data, 64, mesh,
                                          task=tasks.MULTILABEL)(variables, test_records)
  assert step == 200 and probs.shape == got_labels.shape == (128, 4)
  np.testing.assert_array_equal(got_labels, arrays["test_labels"])
  aucs = metrics.finding_aucs(probs, got_labels)
  assert min(aucs) > 0.95, dict(zip(FINDINGS, aucs, strict=True))
  for name, auc in zip(FINDINGS, aucs, strict=True):
    assert last[f"test/auc_{name}"] == pytest.approx(auc, abs=1e-6)


@pytest.mark.slow
def test_main_trains_findings_with_ema_and_mixup_on_eight_devices(tmp_path):
  write_findings_npz(tmp_path / "f.npz", (("train", 64), ("val", 32)))
  workdir = tmp_path / "work"
  result = subprocess.run(
      findings_trainer_command(
          workdir, tmp_path / "f.npz", "--config.training.num_train_steps=4",
          "--config.training.eval_every_steps=2", "--config.training.checkpoint_every_steps=2",
          "--config.training.ema_decay=0.9", "--config.loss.mixup_alpha=0.4",
          "--config.loss.class_weights=balanced", "--config.loss.uncertain=positive"),
      cwd=REPO_ROOT, env=cpu_env(8), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "8 devices" in result.stderr
  lines = _metrics_lines(workdir)
  validated = [line for line in lines if "val/auc" in line]
  assert [line["step"] for line in validated] == [2, 4]
  assert {f"val/auc_{name}" for name in FINDINGS} <= set(validated[-1])
  assert all(np.isfinite(line["train/loss"]) for line in lines if "train/loss" in line)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["task"] == "multilabel" and saved["training"]["ema_decay"] == 0.9
