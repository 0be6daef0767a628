"""A multilabel run read back: predict's probability and decision per finding, Grad-CAM of a
chosen finding, and the stress test per finding, on generated findings at known places."""

import csv
import dataclasses
import io
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest
from helpers import (
  FINDINGS,
  REPO_ROOT,
  cpu_env,
  findings_images,
  findings_training_config,
  write_findings_npz,
)

from xray_jax import classifier, errors, inference, predict, sharding, tasks, trained
from xray_jax import labels as labels_lib
from xray_jax.data import shifts
from xray_jax.evaluators import metrics, multilabel, stress

THRESHOLDS = [0.3, 0.7, 0.5, 0.6]  # An operating point per finding, written by the tests.


@pytest.fixture(scope="module")
def findings_run(tmp_path_factory) -> pathlib.Path:
  """A CNN trained for 120 steps on generated findings (read-only: copy it to change it)."""
  from xray_jax import train

  root = tmp_path_factory.mktemp("findings")
  write_findings_npz(root / "f.npz")
  train.train_and_evaluate(findings_training_config(root / "f.npz", num_train_steps=120),
                           str(root / "work"))
  return root / "work"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[list[str], np.ndarray, np.ndarray, list[dict]]:
  """New PNG files of generated findings: (paths, pixels, labels [N, 4], boxes)."""
  folder = tmp_path_factory.mktemp("held_out")
  images, found, boxes = findings_images(np.random.default_rng(7), 40)
  paths = [str(folder / f"x{i:02d}.png") for i in range(len(images))]
  for path, image in zip(paths, images, strict=True):
    PIL.Image.fromarray(image).save(path)
  return paths, images, found, boxes


def with_thresholds(run_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  """A copy of the run whose latest step has the operating point THRESHOLDS."""
  workdir = tmp_path / "work"
  shutil.copytree(run_dir, workdir)
  path = trained.operating_point_path(workdir, trained.load(workdir).step)
  path.parent.mkdir(exist_ok=True)
  path.write_text(json.dumps({"thresholds": THRESHOLDS, "finding_names": list(FINDINGS)}))
  return workdir


def test_findings_output_names_the_rule_and_each_decision():
  prediction = classifier.FindingsPrediction("a.png", np.array([0.31, 0.69, 0.1, 0.6]),
                                             FINDINGS, np.array(THRESHOLDS))
  assert prediction.present == ["disk", "column"]
  assert prediction.as_dict() == {
      "path": "a.png", "predicted": "disk;column", "prob_disk": 0.31, "prob_bar": 0.69,
      "prob_square": 0.1, "prob_column": 0.6, "has_disk": 1, "has_bar": 0, "has_square": 0,
      "has_column": 1}
  rule = "P(finding) >= its operating threshold: disk 0.3, bar 0.7, square 0.5, column 0.6"
  written = json.loads(predict.format_output([prediction], ".json"))
  assert written["decision"] == rule
  assert written["thresholds"] == dict(zip(FINDINGS, THRESHOLDS, strict=True))
  header = next(csv.reader(io.StringIO(predict.format_output([prediction], ".csv"))))
  assert header[:3] == ["path", f"predicted ({rule})", "prob_disk"]
  assert header[-1] == "has_column"
  none = classifier.FindingsPrediction("b.png", np.array([0.2, 0.4, 0.1, 0.45]), FINDINGS, None)
  assert predict.format_table([prediction, none]).splitlines() == [
      f"decision: {rule}",
      "file   findings present",
      "a.png  disk 0.3100, column 0.6000",
      "b.png  none"]
  assert none.rule == "P(finding) >= 0.5 for each finding, no operating point saved"
  assert json.loads(predict.format_output([none], ".json"))["thresholds"]["bar"] == 0.5


@pytest.mark.slow
def test_predict_gives_each_findings_probability_and_decision(findings_run, held_out, tmp_path):
  workdir = with_thresholds(findings_run, tmp_path)
  paths, images, found, _ = held_out
  loaded = classifier.load(workdir)
  np.testing.assert_array_equal(loaded.thresholds, THRESHOLDS)
  predictions, failures = classifier.classify_files(loaded, paths)
  assert not failures and [p.path for p in predictions] == paths
  probs = np.stack([p.probabilities for p in predictions])
  # The Predictor on the same pixels, as arrays: the sigmoids the run was validated with.
  run = trained.load(workdir)
  expected, _ = inference.Predictor(run.model, run.config.data, 16, sharding.make_mesh(),
                                    task=tasks.MULTILABEL)(
      run.variables, [{"path": p, "image": x, "label": y}
                      for p, x, y in zip(paths, images, found, strict=True)])
  np.testing.assert_allclose(probs, expected, atol=1e-6)
  assert min(metrics.finding_aucs(probs, found)) > 0.95  # It learned every finding.
  rows = list(csv.DictReader(io.StringIO(predict.format_output(predictions, ".csv"))))
  decided = np.array([[int(row[f"has_{n}"]) for n in FINDINGS] for row in rows])
  np.testing.assert_array_equal(decided, probs >= np.array(THRESHOLDS))
  assert 0 < decided.mean() < 1
  assert loaded.decisions(probs) == [[n for n, d in zip(FINDINGS, row, strict=True) if d]
                                     for row in decided]
  # An ensemble averages the members' sigmoids.
  other = dataclasses.replace(run, workdir=tmp_path / "scaled",
                              variables=jax.tree.map(lambda x: 0.9 * x, run.variables))
  records = [{"path": p, "label": 0} for p in paths]
  other_probs = classifier.Classifier(other).predict_records(records)
  assert np.abs(other_probs - probs).max() > 0.05
  np.testing.assert_allclose(classifier.Classifier(run, members=[other]).predict_records(records),
                             (probs + other_probs) / 2, atol=1e-6)


def box_share(heat: np.ndarray, box: tuple[int, int, int, int], margin: int = 4) -> float:
  """The share of a heat map's mass inside `box` grown by `margin` pixels each side (4: one
  cell of the 8x8 feature map that Grad-CAM weighs)."""
  top, bottom, left, right = box
  inside = heat[max(top - margin, 0):bottom + margin, max(left - margin, 0):right + margin]
  return float(inside.sum() / heat.sum())


@pytest.mark.slow
def test_gradcam_of_a_finding_lies_on_its_shape(findings_run, held_out, tmp_path):
  paths, _, _, boxes = held_out
  loaded = classifier.load(findings_run)
  records = [{"path": p, "label": 0} for p in paths]
  heat = {name: loaded.saliency(records, np.full(len(records), k))[0]
          for k, name in enumerate(FINDINGS)}
  for name in FINDINGS:  # Each grown box is a quarter of the image or less.
    shares = [box_share(heat[name][i], drawn[name]) for i, drawn in enumerate(boxes)
              if name in drawn]
    assert len(shares) >= 8 and np.median(shares) > 0.5, (name, np.round(shares, 2))
  # On images with both, the disk's map is on the disk, the square's on the square.
  both = [i for i, drawn in enumerate(boxes) if {"disk", "square"} <= set(drawn)]
  on_disk = [[box_share(heat[name][i], boxes[i]["disk"]) for i in both]
             for name in ("disk", "square")]
  assert len(both) >= 3 and np.all(np.greater(*on_disk)), on_disk

  predictions, _ = classifier.classify_files(loaded, paths[:3], tmp_path / "default")
  most_probable = [FINDINGS[int(np.argmax(p.probabilities))] for p in predictions]
  assert sorted(p.name for p in (tmp_path / "default").iterdir()) == [
      f"x{i:02d}_{name}_gradcam.png" for i, name in enumerate(most_probable)]
  with pytest.raises(errors.ConfigError) as e:
    classifier.classify_files(loaded, paths, tmp_path / "none", "nodule")
  assert str(e.value) == (f"'nodule' is not a finding of {findings_run}: expected one of "
                          "disk, bar, square, column")
  assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_predict_binary_writes_findings_and_the_chosen_findings_overlays(
    findings_run, held_out, tmp_path):
  paths = held_out[0][:4]
  output, saliency = tmp_path / "preds.csv", tmp_path / "saliency"
  result = subprocess.run(
      [sys.executable, "-m", "xray_jax.predict", f"--workdir={findings_run}",
       f"--output={output}", f"--saliency_dir={saliency}", "--saliency_of=square", *paths],
      cwd=REPO_ROOT, env=cpu_env(2), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[:2] == ["decision: P(finding) >= 0.5 for each finding, no operating point saved",
                       f"{'file':<{len(paths[0])}}  findings present"]
  rows = list(csv.DictReader(output.open()))
  assert [r["path"] for r in rows] == paths
  for row, line in zip(rows, lines[2:], strict=True):
    present = [n for n in FINDINGS if row[f"has_{n}"] == "1"]
    assert present == [n for n in FINDINGS if float(row[f"prob_{n}"]) >= 0.5]
    assert row["predicted (P(finding) >= 0.5 for each finding, no operating point saved)"] == (
        ";".join(present))
    assert line.split()[1::2] == (present or ["none"])
  assert sorted(p.name for p in saliency.iterdir()) == [
      f"x{i:02d}_square_gradcam.png" for i in range(4)]


@pytest.mark.slow
def test_stress_reports_each_finding_under_each_shift(findings_run, tmp_path):
  workdir = with_thresholds(findings_run, tmp_path)
  config = trained.load_config(workdir)
  report = stress.stress_test(workdir, "latest", config.evaluation)
  assert report["thresholds"] == THRESHOLDS and report["temperature"] == 1.0
  assert set(report["shifts"]) == set(shifts.SHIFTS)
  saved = np.load(workdir / "eval" / f"stress_step{report['step']}.npz")
  labels = saved["labels"]
  assert labels.shape[1] == 4 and np.isnan(labels).any()
  assert not (labels == labels_lib.UNCERTAIN).any()  # Uncertain validation labels: missing.
  # Each entry is the finding report of the probabilities kept for it.
  blur = multilabel.finding_report(saved["blur_3"], labels, FINDINGS, THRESHOLDS)
  for name in FINDINGS:
    for score in stress.FINDING_SCORES:
      assert report["shifts"]["blur"]["3"]["per_finding"][name][score] == pytest.approx(
          blur["per_finding"][name][score])
  assert report["clean"]["macro"]["roc_auc"] > 0.95
  results = [r for by_severity in report["shifts"].values() for r in by_severity.values()]
  assert len(results) == 3 * len(shifts.SHIFTS)
  assert report["mean"]["per_finding"]["disk"]["roc_auc"] == pytest.approx(
      np.mean([r["per_finding"]["disk"]["roc_auc"] for r in results]))
  assert report["mean"]["macro"]["roc_auc"] == pytest.approx(
      np.mean([r["macro"]["roc_auc"] for r in results]))
  # Over-exposure washes out the bright shapes and the dark square alike.
  exposed = [report["shifts"]["brightness"][s]["macro"]["roc_auc"] for s in ("1", "3")]
  assert exposed[1] < exposed[0] - 0.2
  table = stress.finding_table(report).splitlines()
  assert table[0].split() == ["shift", "sev", "macro", *FINDINGS]
  assert len(table) == 2 + len(results) + 1  # Header, clean, each shifted, mean.
  assert table[-1].split()[1] == f"{report['mean']['macro']['roc_auc']:.3f}"
  with PIL.Image.open(workdir / "eval" / f"stress_step{report['step']}.png") as image:
    assert image.size[0] > image.size[1] > 400  # 5 panels: 4 a row, then 1.


@pytest.mark.slow
def test_a_temperature_is_refused_for_a_multilabel_run(findings_run, tmp_path):
  workdir = with_thresholds(findings_run, tmp_path)
  path = trained.operating_point_path(workdir, 120)
  path.write_text(json.dumps({"thresholds": THRESHOLDS, "temperature": 1.5}))
  with pytest.raises(errors.DataError, match=f"{path}: holds a temperature, but temperature "
                     "scaling is for single-label runs"):
    classifier.load(workdir)
