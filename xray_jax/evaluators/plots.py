"""PNG figures of evaluation results: ROC, precision-recall, confusion matrix and reliability.

Figures are built with matplotlib's object API on an Agg canvas instead of pyplot, so
importing this module neither switches the caller's backend nor leaves figures registered.
"""

import io
import os
import pathlib

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xray_jax import workdir as workdir_lib
from xray_jax.evaluators import metrics

PathLike = str | os.PathLike


def _new_figure(figsize: tuple[float, float] = (5.0, 5.0), **subplot_kw) -> tuple[Figure, Axes]:
  figure = Figure(figsize=figsize, dpi=100, layout="constrained")
  FigureCanvasAgg(figure)
  return figure, figure.add_subplot(**subplot_kw)


def _save(figure: Figure, path: PathLike) -> pathlib.Path:
  path, buffer = pathlib.Path(path), io.BytesIO()
  figure.savefig(buffer, format="png")
  workdir_lib.write_atomically(path, buffer.getvalue())  # Never a half-written figure.
  return path


def _unit_square(axes: Axes, xlabel: str, ylabel: str, title: str) -> None:
  axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
  axes.set_aspect("equal")
  axes.grid(alpha=0.3)


def _draw_roc(axes: Axes, is_positive: np.ndarray, scores: np.ndarray, title: str,
              interval: str = "", **legend_kw) -> None:
  """A ROC curve with its AUC (and `interval`) in the legend and the chance diagonal."""
  fpr, tpr, _ = metrics.roc_curve(is_positive, scores)
  auc = metrics.roc_auc(is_positive, scores)
  # Single-class data has no curve; still draw the axes so a per-class loop never fails.
  label = "AUC undefined (one class)" if np.isnan(auc) else f"AUC = {auc:.3f}"
  label += f" ({interval})" if interval and not np.isnan(auc) else ""
  axes.plot(fpr, tpr, color="tab:blue", lw=2, label=label)
  axes.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="Chance")
  _unit_square(axes, "False positive rate (1 - specificity)", "True positive rate (sensitivity)",
               title)
  axes.legend(loc="lower right", **legend_kw)


def plot_roc(is_positive: np.ndarray, scores: np.ndarray, path: PathLike,
             title: str = "ROC curve", interval: str = "") -> pathlib.Path:
  """One-vs-rest ROC curve with its AUC (and `interval`, e.g. "95% CI 0.93-0.97") and the
  chance diagonal."""
  figure, axes = _new_figure()
  _draw_roc(axes, is_positive, scores, title, interval)
  return _save(figure, path)


def plot_roc_panels(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: PathLike,
                    title: str = "ROC curves", intervals: dict[str, str] | None = None,
                    operating_points: dict[str, tuple[float, float]] | None = None,
                    ) -> pathlib.Path:
  """One small ROC panel per curve (name -> (is_positive, scores)), its AUC and interval text
  in the legend and, where given, its operating point (false positive rate, sensitivity)."""
  if not curves:
    raise ValueError("plot_roc_panels needs at least one curve.")
  columns = min(len(curves), 4)
  rows = -(-len(curves) // columns)
  figure = Figure(figsize=(3.2 * columns, 3.4 * rows), dpi=100, layout="constrained")
  FigureCanvasAgg(figure)
  panels = figure.subplots(rows, columns, squeeze=False).ravel()
  for axes, (name, (is_positive, scores)) in zip(panels, curves.items(), strict=False):
    if operating_points and name in operating_points:
      axes.plot(*operating_points[name], "o", color="tab:red", ms=5, zorder=3,
                label="Operating point")
    _draw_roc(axes, is_positive, scores, name, (intervals or {}).get(name, ""), fontsize=7)
    axes.xaxis.label.set_size(8)
    axes.yaxis.label.set_size(8)
  for axes in panels[len(curves):]:
    axes.set_axis_off()
  figure.suptitle(title)
  return _save(figure, path)


def plot_precision_recall(is_positive: np.ndarray, scores: np.ndarray, path: PathLike,
                          title: str = "Precision-recall curve") -> pathlib.Path:
  """Step-wise precision-recall curve with its average precision and the prevalence baseline."""
  precision, recall, _ = metrics.precision_recall_curve(is_positive, scores)
  prevalence = float(np.mean(np.asarray(is_positive, bool)))
  figure, axes = _new_figure()
  # Steps match the uninterpolated sum that average_precision computes.
  axes.plot(recall, precision, drawstyle="steps-post", color="tab:blue", lw=2,
            label=f"AP = {metrics.average_precision(is_positive, scores):.3f}")
  axes.axhline(prevalence, color="gray", ls="--", lw=1, label=f"Prevalence = {prevalence:.3f}")
  _unit_square(axes, "Recall (sensitivity)", "Precision", title)
  axes.legend(loc="lower left")
  return _save(figure, path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: PathLike,
                          title: str = "Confusion matrix") -> pathlib.Path:
  """Counts (rows true, columns predicted) annotated with their share of the true class."""
  matrix = np.asarray(matrix)
  num_classes = len(class_names)
  if matrix.shape != (num_classes, num_classes):
    raise ValueError(f"Matrix {matrix.shape} does not match {num_classes} class names.")
  size = 2.0 + 1.2 * num_classes
  figure, axes = _new_figure((size + 1.0, size))
  image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
  figure.colorbar(image, ax=axes, shrink=0.8)
  row_totals = np.maximum(matrix.sum(axis=1), 1)
  for (row, col), count in np.ndenumerate(matrix):
    # Light text on dark cells keeps the counts readable.
    color = "white" if count > matrix.max() / 2 else "black"
    axes.text(col, row, f"{count}\n{100 * count / row_totals[row]:.1f}%", ha="center",
              va="center", color=color, fontsize=10)
  ticks = np.arange(num_classes)
  # Many class names overlap side by side; slant them.
  slant = {"rotation": 45, "ha": "right"} if num_classes > 3 else {}
  axes.set_xticks(ticks, class_names, **slant)
  axes.set_yticks(ticks, class_names)
  axes.set(xlabel="Predicted class", ylabel="True class", title=title)
  return _save(figure, path)


def plot_reliability(probs: np.ndarray, labels: np.ndarray, path: PathLike,
                     title: str = "Reliability diagram", num_bins: int = 15) -> pathlib.Path:
  """Accuracy against top-label confidence per bin, with the diagonal and bin counts below."""
  counts, confidence, accuracy = metrics.reliability_bins(probs, labels, num_bins)
  ece = metrics.expected_calibration_error(probs, labels, num_bins)
  centers = (np.arange(num_bins) + 0.5) / num_bins
  width = 1.0 / num_bins
  filled = counts > 0
  figure = Figure(figsize=(5.0, 6.5), dpi=100, layout="constrained")
  FigureCanvasAgg(figure)
  top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  top.bar(centers[filled], accuracy[filled], width=width, color="tab:blue", edgecolor="black",
          lw=0.5, label="Accuracy")
  top.plot(confidence[filled], accuracy[filled], "o", color="tab:red", ms=4,
           label="Mean confidence")
  top.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="Perfect calibration")
  top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="Accuracy", title=f"{title} (ECE = {ece:.3f})")
  top.grid(alpha=0.3)
  top.legend(loc="upper left")
  bottom.bar(centers, counts, width=width, color="tab:gray", edgecolor="black", lw=0.5)
  bottom.set(xlabel="Top-label confidence", ylabel="Examples")
  return _save(figure, path)


def plot_shift_curves(curves: dict[str, dict[str, list[float | None]]], path: PathLike,
                      title: str = "Stress test") -> pathlib.Path:
  """One panel per score (up to 4 a row): its value against shift severity (0 = no shift),
  one line per shift. `curves`: score name -> shift name -> values at severities 0, 1, 2, ..."""
  columns = min(len(curves), 4)
  rows = -(-len(curves) // columns)
  figure = Figure(figsize=(5.0 * columns, 4.5 * rows), dpi=100, layout="constrained")
  FigureCanvasAgg(figure)
  panels = figure.subplots(rows, columns, squeeze=False).ravel()
  for axes in panels[len(curves):]:
    axes.set_axis_off()
  for axes, (score, by_shift) in zip(panels, curves.items(), strict=False):
    for name, values in by_shift.items():
      y = np.array([np.nan if v is None else v for v in values], float)
      axes.plot(np.arange(len(y)), y, marker="o", lw=1.5, label=name)
    axes.set(xlabel="Severity (0: none)", ylabel=score.replace("_", " "), ylim=(0, 1.02))
    axes.set_xticks(np.arange(len(next(iter(by_shift.values())))))
    axes.grid(alpha=0.3)
  panels[0].legend(loc="lower left", fontsize=8)
  figure.suptitle(title)
  return _save(figure, path)
