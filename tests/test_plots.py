"""Each evaluation figure is written as a non-blank PNG without leaving pyplot state behind."""

import sys

import numpy as np
import PIL.Image
import pytest

from xray_jax.evaluators import metrics, plots


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 200)
  logits = rng.normal(size=(200, 3)) + 2.0 * np.eye(3)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  return probs, labels


def check_png(path, expected, size) -> None:
  assert path == expected
  assert path.stat().st_size > 0
  with PIL.Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == size
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
  # Curves, text and fills give many colours; a blank canvas has one.
  assert len(np.unique(pixels, axis=0)) > 10


def test_plot_roc_and_precision_recall(data, tmp_path):
  probs, labels = data
  is_positive, scores = labels == 1, probs[:, 1]
  check_png(plots.plot_roc(is_positive, scores, tmp_path / "roc.png", "ROC"),
            tmp_path / "roc.png", (500, 500))
  path = tmp_path / "nested" / "pr.png"
  check_png(plots.plot_precision_recall(is_positive, scores, str(path), "PR"), path, (500, 500))


def test_plot_roc_single_class_still_writes(tmp_path):
  path = plots.plot_roc(np.zeros(4, bool), [0.1, 0.2, 0.3, 0.4], tmp_path / "roc.png", "ROC")
  check_png(path, tmp_path / "roc.png", (500, 500))


@pytest.mark.parametrize("num_classes", [2, 5])
def test_plot_confusion_matrix(num_classes, tmp_path):
  rng = np.random.default_rng(num_classes)
  matrix = metrics.confusion_matrix(rng.integers(0, num_classes, 100),
                                    rng.integers(0, num_classes, 100), num_classes)
  names = [f"class{c}" for c in range(num_classes)]
  size = 2.0 + 1.2 * num_classes
  check_png(plots.plot_confusion_matrix(matrix, names, tmp_path / "cm.png", "CM"),
            tmp_path / "cm.png", (round(100 * (size + 1)), round(100 * size)))
  with pytest.raises(ValueError, match="class names"):
    plots.plot_confusion_matrix(matrix, names[:-1], tmp_path / "bad.png", "CM")


def test_plot_reliability(data, tmp_path):
  probs, labels = data
  check_png(plots.plot_reliability(probs, labels, tmp_path / "rel.png", "Reliability", 10),
            tmp_path / "rel.png", (500, 650))


def test_plots_leave_no_pyplot_figures(data, tmp_path):
  probs, labels = data
  plots.plot_reliability(probs, labels, tmp_path / "rel.png", "Reliability")
  plots.plot_roc(labels == 0, probs[:, 0], tmp_path / "roc.png", "ROC")
  pyplot = sys.modules.get("matplotlib.pyplot")
  assert pyplot is None or not pyplot.get_fignums()
