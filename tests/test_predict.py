"""Inference on new files and arrays: xray_jax.classifier and the predict binary."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from helpers import (
  REPO_ROOT,
  assert_each_log_line_once,
  make_dicom,
  run_in_terminal,
  write_dicom,
  write_image,
)

from xray_jax import classifier, predict, trained
from xray_jax.evaluators import evaluation

pytestmark = pytest.mark.slow


@pytest.fixture
def new_images(tmp_path):
  rng = np.random.default_rng(5)
  folder = tmp_path / "incoming"
  write_image(folder / "a.png", 0, rng)
  write_image(folder / "nested" / "b.jpeg", 1, rng)
  write_image(tmp_path / "c.jpg", 1, rng)
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  return folder, tmp_path / "c.jpg"


def test_classify_files_skips_and_reports_unreadable_files(trained_workdir, new_images):
  folder, single = new_images
  loaded = classifier.load(trained_workdir)
  paths, failures = classifier.find_images([str(folder), str(single), str(folder / "gone.png")])
  assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["a.png", "b.jpeg", "broken.png",
                                                        "c.jpg"]
  assert list(failures) == [str(folder / "gone.png")]
  predictions, unreadable = classifier.classify_files(loaded, paths)
  assert list(unreadable) == [str(folder / "broken.png")]
  assert "broken.png: cannot read image" in unreadable[str(folder / "broken.png")]
  assert [p.path for p in predictions] == [p for p in paths if p not in unreadable]
  for p in predictions:
    assert p.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_api_arrays_files_and_evaluate_give_identical_probabilities(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  config = trained.load_config(workdir)
  evaluation.evaluate_checkpoint(workdir, "val", "latest", config.evaluation)
  rows = list(csv.DictReader((workdir / "eval" / "val_step6_predictions.csv").open()))
  assert {r["path"].rsplit(".", 1)[1] for r in rows} == {"png", "jpeg"}

  loaded = classifier.load(workdir, batch_size=config.training.eval_batch_size)
  pixels = [np.asarray(PIL.Image.open(r["path"]).convert("L")) for r in rows]  # Any size.
  from_arrays = loaded(pixels)
  from_files = loaded.predict_records([{"path": r["path"], "label": 0} for r in rows])
  np.testing.assert_array_equal(from_arrays, from_files)
  assert ([[f"{p:.6f}" for p in row] for row in from_arrays]
          == [[r["prob_NORMAL"], r["prob_PNEUMONIA"]] for r in rows])
  # Float pixels in [0, 1] are resized in float (as DICOM pixels are): close, not equal.
  from_floats = loaded([x / np.float32(255) for x in pixels])
  np.testing.assert_allclose(from_floats, from_arrays, atol=0.05)


def test_predict_binary_outputs_and_exit_code(trained_workdir, new_images, tmp_path):
  folder, single = new_images
  output = tmp_path / "out" / "preds.json"
  saliency = tmp_path / "out" / "saliency"
  command = [sys.executable, "-m", "xray_jax.predict", "--alsologtostderr",
             f"--workdir={trained_workdir}", f"--output={output}", f"--saliency_dir={saliency}",
             str(folder), str(single)]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
  assert result.returncode == 1  # One file could not be read ...
  assert "failed: " in result.stderr and "broken.png: cannot read image" in result.stderr
  assert "Wrote 3 predictions to" in result.stderr
  assert_each_log_line_once(result.stderr)
  written = json.loads(output.read_text())  # ... the others are classified.
  rows = written["predictions"]
  assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == ["a.png", "b.jpeg", "c.jpg"]
  assert set(rows[0]) == {"path", "predicted", "prob_NORMAL", "prob_PNEUMONIA"}
  # One decision per image, by the rule that the output names: no threshold was saved.
  assert written["threshold"] == 0.5
  assert written["decision"] == "P(PNEUMONIA) >= 0.5, no operating point saved"
  assert all(r["predicted"] == ("PNEUMONIA" if r["prob_PNEUMONIA"] >= 0.5 else "NORMAL")
             for r in rows)
  assert "decision: P(PNEUMONIA) >= 0.5, no operating point saved" in result.stdout
  overlays = sorted(p.name for p in saliency.iterdir())
  assert overlays == ["a_gradcam.png", "b_gradcam.png", "c_gradcam.png"]
  with PIL.Image.open(saliency / "a_gradcam.png") as image:
    assert image.mode == "RGB"

  again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                         env=env)
  assert again.returncode == 1 and "exists; pass --overwrite" in again.stderr
  assert json.loads(output.read_text()) == written  # Untouched.

  as_csv = tmp_path / "out" / "preds.csv"
  only_broken = subprocess.run(
      [*command[:3], f"--workdir={trained_workdir}", f"--output={as_csv}",
       str(folder / "broken.png")], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=600, env=env)
  assert only_broken.returncode == 1
  assert not as_csv.exists()  # Nothing classified: no empty file blocks the next try.


def test_predict_in_a_terminal_shows_a_progress_bar(trained_workdir, tmp_path):
  rng = np.random.default_rng(11)
  for i in range(40):  # 3 batches of 16.
    write_image(tmp_path / "many" / f"x{i:02d}.png", i % 2, rng)
  returncode, screen = run_in_terminal(
      [sys.executable, "-m", "xray_jax.predict", f"--workdir={trained_workdir}",
       "--batch_size=16", str(tmp_path / "many")])
  assert returncode == 0
  assert re.search(r"predicting: +\d+%\|.*\| 0/3 \[", screen)  # A bar over 3 batches ...
  assert re.search(r"predicting: +\d+%\|.*\| [123]/3 \[", screen)  # ... that advances.
  assert screen.count(".png") == 40  # The table still lists every file.


def test_threshold_from_validation_is_reported(trained_workdir, tmp_path):
  run = trained.load(trained_workdir)
  point = trained.operating_point_path(trained_workdir, run.step)
  assert not point.exists()
  point.parent.mkdir(exist_ok=True)
  point.write_text(json.dumps({"threshold": 0.0}))
  try:
    loaded = classifier.Classifier(run)
    assert loaded.threshold == 0.0
    # P(PNEUMONIA) = 0.1 reaches the saved threshold 0: the decision follows it, not argmax.
    prediction = classifier.Prediction("x.png", np.array([0.9, 0.1]), run.class_names, 0.0)
    assert prediction.predicted == "PNEUMONIA"
    assert loaded.decisions(np.array([[0.9, 0.1], [1.0, 0.0]])) == ["PNEUMONIA", "PNEUMONIA"]
    table = predict.format_table([prediction])
    assert table.splitlines()[0] == "decision: P(PNEUMONIA) >= 0, operating point"
    header = predict.format_output([prediction], ".csv").splitlines()[0]
    assert header == ('path,"predicted (P(PNEUMONIA) >= 0, operating point)",'
                      "prob_NORMAL,prob_PNEUMONIA")
  finally:
    point.unlink()


def test_dicom_files_are_classified_like_images(trained_workdir, tmp_path):
  rng = np.random.default_rng(7)
  write_image(tmp_path / "scan.png", 1, rng)
  pixels = np.asarray(PIL.Image.open(tmp_path / "scan.png")).astype(np.uint16) * 16  # 12 bit.
  write_dicom(tmp_path / "dicoms" / "scan.dcm",
              make_dicom(pixels, "MONOCHROME2", 12, WindowCenter=2040, WindowWidth=4080))
  loaded = classifier.load(trained_workdir)
  paths, _ = classifier.find_images([str(tmp_path / "dicoms"), str(tmp_path / "scan.png")])
  predictions, failures = classifier.classify_files(loaded, paths)
  assert not failures and [p.path.rsplit(".", 1)[1] for p in predictions] == ["dcm", "png"]
  np.testing.assert_allclose(predictions[0].probabilities, predictions[1].probabilities,
                             atol=0.02)
