"""Per-finding figures of multi-label predictions: equal to scikit-learn's on the known labels,
missing (NaN) labels left out of their finding only, and intervals that cover known AUCs."""

import logging
import math

import numpy as np
import PIL.Image
import pytest
from sklearn import metrics as sk

from xray_jax.evaluators import bootstrap, multilabel

NAMES = ["atelectasis", "edema", "effusion", "nodule"]


def _predictions(seed: int = 0, num_images: int = 300, missing: float = 0.15):
  """Scores that rank positives higher, labels of varied prevalence with `missing` NaN."""
  rng = np.random.default_rng(seed)
  labels = (rng.random((num_images, len(NAMES))) < [0.1, 0.3, 0.5, 0.2]).astype(float)
  probs = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.5 * labels - 1)))
  probs[:, 1] = np.round(probs[:, 1], 1)  # Ties.
  labels[rng.random(labels.shape) < missing] = np.nan
  return probs, labels


def test_report_matches_sklearn_on_the_known_labels():
  probs, labels = _predictions()
  thresholds = [0.3, 0.5, 0.6, 0.45]
  report = multilabel.finding_report(probs, labels, NAMES, thresholds)
  aucs, aps = [], []
  for k, name in enumerate(NAMES):
    known = ~np.isnan(labels[:, k])
    y, s = labels[known, k].astype(int), probs[known, k]
    called = (s >= thresholds[k]).astype(int)
    found = report["per_finding"][name]
    aucs.append(sk.roc_auc_score(y, s))
    aps.append(sk.average_precision_score(y, s))
    assert found["roc_auc"] == pytest.approx(aucs[-1], abs=1e-12)
    assert found["pr_auc"] == pytest.approx(aps[-1], abs=1e-12)
    assert (found["positives"], found["negatives"]) == (y.sum(), len(y) - y.sum())
    assert found["prevalence"] == pytest.approx(y.mean())
    assert found["threshold"] == thresholds[k]
    assert found["sensitivity"] == pytest.approx(sk.recall_score(y, called))
    assert found["specificity"] == pytest.approx(sk.recall_score(y, called, pos_label=0))
    assert found["precision"] == pytest.approx(sk.precision_score(y, called, zero_division=0))
    assert found["f1"] == pytest.approx(sk.f1_score(y, called, zero_division=0))
  known = ~np.isnan(labels)
  assert report["macro"]["findings"] == len(NAMES)
  assert report["macro"]["roc_auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
  assert report["macro"]["pr_auc"] == pytest.approx(np.mean(aps), abs=1e-12)
  assert report["micro"]["roc_auc"] == pytest.approx(
      sk.roc_auc_score(labels[known], probs[known]), abs=1e-12)
  assert report["micro"]["pr_auc"] == pytest.approx(
      sk.average_precision_score(labels[known], probs[known]), abs=1e-12)
  assert report["labels_used"] == known.sum() and report["labels_missing"] == (~known).sum()
  assert report["num_images"] == 300 and report["finding_names"] == NAMES
  # No NaN labels: sklearn's own macro and micro averages over the label matrix.
  full = np.nan_to_num(labels)
  complete = multilabel.finding_report(probs, full, NAMES)
  for average in ("macro", "micro"):
    assert complete[average]["roc_auc"] == pytest.approx(
        sk.roc_auc_score(full, probs, average=average), abs=1e-12)
    assert complete[average]["pr_auc"] == pytest.approx(
        sk.average_precision_score(full, probs, average=average), abs=1e-12)
  assert {f["threshold"] for f in complete["per_finding"].values()} == {0.5}


def test_thresholds_chosen_per_finding_by_hand():
  # Column 0 by hand (NaN row left out): Youden TPR - FPR over thresholds 0.8, 0.6, 0.35,
  # 0.3, 0.1 is 1/2, 1/6, 2/3, 1/3, 0, so 0.35; the highest reaching sensitivity 1/2 is 0.8.
  # Counted as a negative, the NaN row at 0.5 would tie 0.35 with 0.8 (1/2 each): 0.8.
  probs = np.array([[0.1, 0.2], [0.3, 0.6], [0.35, 0.4], [0.6, 0.9], [0.8, 0.1], [0.5, 0.5]])
  labels = np.array([[0, 0], [0, 0], [1, 0], [0, np.nan], [1, 0], [np.nan, 0]])
  youden = multilabel.choose_thresholds(probs, labels, "youden")
  assert youden == {"method": "youden", "thresholds": [0.35, 0.5], "kept_default": [False, True]}
  half = multilabel.choose_thresholds(probs, labels, "sensitivity", target_sensitivity=0.5)
  assert half["thresholds"] == [0.8, 0.5]
  report = multilabel.finding_report(probs, labels, ["a", "b"], youden["thresholds"])
  found = report["per_finding"]["a"]
  assert (found["sensitivity"], found["specificity"], found["precision"]) == (1.0, 2 / 3, 2 / 3)
  assert found["f1"] == pytest.approx(0.8)
  with pytest.raises(ValueError, match="robust"):
    multilabel.choose_thresholds(probs, labels, "robust")


def test_a_missing_label_changes_nothing_else():
  probs, labels = _predictions(seed=1)
  before = multilabel.finding_report(probs, labels, NAMES)
  row = int(np.flatnonzero(~np.isnan(labels[:, 2]))[0])
  labels[row, 2] = np.nan
  after = multilabel.finding_report(probs, labels, NAMES)
  for name in ("atelectasis", "edema", "nodule"):
    assert after["per_finding"][name] == before["per_finding"][name]
  assert after["labels_missing"] == before["labels_missing"] + 1
  # The finding that lost it equals its report without that image at all.
  kept = np.arange(len(probs)) != row
  alone = multilabel.finding_report(probs[kept], labels[kept], NAMES)
  assert after["per_finding"]["effusion"] == alone["per_finding"]["effusion"]
  assert after["per_finding"]["effusion"] != before["per_finding"]["effusion"]


def test_a_finding_with_one_class_or_no_labels():
  probs, labels = _predictions(seed=2, missing=0.0)
  labels[:, 1] = 0.0  # Only negatives.
  labels[:, 3] = np.nan  # Never labelled.
  report = multilabel.finding_report(probs, labels, NAMES)
  one_class, unlabelled = report["per_finding"]["edema"], report["per_finding"]["nodule"]
  assert one_class["roc_auc"] is None and one_class["pr_auc"] is None
  assert one_class["sensitivity"] is None and one_class["specificity"] is not None
  assert one_class["prevalence"] == 0.0 and one_class["positives"] == 0
  assert unlabelled["positives"] == unlabelled["negatives"] == 0
  assert unlabelled["prevalence"] is None and unlabelled["roc_auc"] is None
  both = [report["per_finding"][name] for name in ("atelectasis", "effusion")]
  assert report["macro"]["findings"] == 2
  for figure in ("roc_auc", "pr_auc", "sensitivity", "specificity"):
    assert report["macro"][figure] == pytest.approx(np.mean([f[figure] for f in both]))
  groups = [str(i) for i in range(len(probs))]
  intervals = multilabel.finding_intervals(probs, labels, NAMES, groups, num_resamples=50)
  assert intervals["per_finding"]["edema"]["roc_auc"] == [None, None]
  assert intervals["per_finding"]["nodule"]["specificity"] == [None, None]
  assert None not in intervals["macro"]["roc_auc"]


@pytest.mark.parametrize("bad, match", [
    ({"labels": np.full((3, 4), -1.0)}, "NaN"),
    ({"labels": np.zeros((3, 3))}, "shape"),
    ({"probs": np.full((3, 4), np.nan)}, "NaN or infinite"),
    ({"finding_names": NAMES[:3]}, "3 finding names"),
    ({"thresholds": [0.5, 0.5]}, "2 thresholds"),
])
def test_bad_input_is_refused(bad, match):
  arguments = {"probs": np.full((3, 4), 0.5), "labels": np.zeros((3, 4)),
               "finding_names": NAMES, **bad}
  with pytest.raises(ValueError, match=match):
    multilabel.finding_report(**arguments)


def test_one_resample_draws_the_patients_of_every_finding():
  probs, labels = _predictions(seed=3, missing=0.0)
  probs[:, 3], labels[:, 3] = probs[:, 2], labels[:, 2]
  groups = [f"p{i // 3}" for i in range(len(probs))]  # Three films a patient.
  thresholds = [0.3, 0.5, 0.6, 0.6]
  found = multilabel.finding_intervals(probs, labels, NAMES, groups, thresholds, 200, seed=7)
  assert found["unit"] == "patient" and found["groups"] == 100 and found["resamples"] == 200
  # Findings 2 and 3 are one column twice: equal intervals only if they share the draws.
  assert found["per_finding"]["nodule"] == found["per_finding"]["effusion"]
  # The draws are bootstrap.py's: one finding's intervals are its binary intervals.
  for k, name in enumerate(NAMES):
    binary = bootstrap.confidence_intervals(labels[:, k] == 1, probs[:, k], thresholds[k],
                                            groups, 200, seed=7)
    for figure in multilabel.INTERVAL_FIGURES:
      assert found["per_finding"][name][figure] == pytest.approx(binary[figure], abs=1e-12)
  # And the macro mean of two equal findings is each of them, resample by resample.
  twice = multilabel.finding_intervals(probs[:, 2:], labels[:, 2:], NAMES[2:], groups,
                                       0.6, 200, seed=7)
  for figure, interval in twice["macro"].items():
    assert interval == pytest.approx(twice["per_finding"]["effusion"][figure], abs=1e-12)


def test_paired_auc_difference_shares_the_draws_of_the_binary_comparison():
  probs, labels = _predictions(seed=5)
  other = np.clip(probs + np.random.default_rng(1).normal(0, 0.2, probs.shape), 0, 1)
  groups = [f"p{i // 2}" for i in range(len(probs))]
  found = multilabel.paired_auc_difference(labels, probs, other, NAMES, groups, 300, seed=2)
  assert set(found) == {"roc_auc_macro", *(f"roc_auc_{name}" for name in NAMES)}
  report_a = multilabel.finding_report(probs, labels, NAMES)
  report_b = multilabel.finding_report(other, labels, NAMES)
  assert found["roc_auc_macro"]["a"] == pytest.approx(report_a["macro"]["roc_auc"], abs=1e-12)
  assert found["roc_auc_macro"]["b"] == pytest.approx(report_b["macro"]["roc_auc"], abs=1e-12)
  # Without missing labels, each finding's comparison is the binary one, draw for draw.
  complete = np.nan_to_num(labels)
  found = multilabel.paired_auc_difference(complete, probs, other, NAMES, groups, 300, seed=2)
  for k, name in enumerate(NAMES):
    binary = bootstrap.paired_difference(complete[:, k] == 1, probs[:, k], other[:, k],
                                         (0.5, 0.5), groups, 300, seed=2)["roc_auc"]
    assert found[f"roc_auc_{name}"] == pytest.approx(binary, abs=1e-12)
  itself = multilabel.paired_auc_difference(labels, probs, probs, NAMES, groups, 100)
  assert all(f["difference"] == f["low"] == f["high"] == 0 and f["p_value"] == 1.0
             for f in itself.values())


def test_intervals_cover_known_aucs_and_decision_figures_at_about_95_percent():
  """Per finding, positives score N(d, 1) and negatives N(0, 1): AUC is Phi(d / sqrt 2), and
  at threshold t sensitivity is 1 - Phi(t - d) and specificity Phi(t)."""
  phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
  separations, threshold = np.array([0.8, 1.5, 2.0]), 0.7
  truth = {"roc_auc": [phi(d / math.sqrt(2)) for d in separations],
           "sensitivity": [1 - phi(threshold - d) for d in separations],
           "specificity": [phi(threshold)] * 3}
  rng = np.random.default_rng(0)
  names, groups = ["a", "b", "c"], [str(i) for i in range(200)]
  repeats = 120
  hits = {(figure, where): 0 for figure in truth for where in ("finding", "macro")}
  for _ in range(repeats):
    labels = (np.arange(200) < 100)[:, None].repeat(3, axis=1).astype(float)
    scores = rng.normal(size=(200, 3)) + separations * labels
    found = multilabel.finding_intervals(scores, labels, names, groups, threshold, 300,
                                         seed=int(rng.integers(1 << 30)))
    for figure, values in truth.items():
      for k, name in enumerate(names):
        low, high = found["per_finding"][name][figure]
        hits[figure, "finding"] += low <= values[k] <= high
      low, high = found["macro"][figure]
      hits[figure, "macro"] += low <= np.mean(values) <= high
  for (figure, where), count in hits.items():
    rate = count / repeats / (3 if where == "finding" else 1)
    assert 0.88 <= rate <= 0.99, (figure, where, rate)


def test_roc_figure_and_summary_lines(tmp_path, caplog):
  probs, labels = _predictions(seed=4)
  labels[:, 3] = np.nan  # Never labelled: no panel.
  chosen = multilabel.choose_thresholds(probs, labels, "youden")
  report = multilabel.finding_report(probs, labels, NAMES, chosen["thresholds"])
  report["intervals"] = multilabel.finding_intervals(
      probs, labels, NAMES, [str(i) for i in range(len(probs))], chosen["thresholds"], 100)
  path = tmp_path / "eval" / "test_step4_roc_findings.png"
  assert multilabel.plot_roc_per_finding(probs, labels, report, path, "ROC: test") == path
  with PIL.Image.open(path) as image:
    assert image.format == "PNG" and image.size == (960, 340)  # Three panels in a row.
    assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 10
  assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # No temporary left.
  lines = multilabel.summary_lines(report)
  assert len(lines) == len(NAMES) + 3
  edema, auc = report["per_finding"]["edema"], report["intervals"]["per_finding"]["edema"]
  assert lines[1].startswith(f"edema: ROC AUC {edema['roc_auc']:.4f} "
                             f"({auc['roc_auc'][0]:.4f}-{auc['roc_auc'][1]:.4f}), sensitivity ")
  assert f"at threshold {edema['threshold']:.3f}" in lines[1]
  assert lines[3].startswith("nodule: ROC AUC n/a, sensitivity n/a, specificity n/a")
  assert lines[4].startswith("macro over 3 findings with both classes: ROC AUC ")
  assert lines[5].startswith(f"micro over {report['labels_used']} labels")
  assert lines[6] == "intervals: 95% percentile bootstrap, 100 resamples of its 300 images"
  with caplog.at_level(logging.INFO):
    multilabel.log_summary("test step 4", report)
  assert caplog.messages == [f"test step 4 {line}" for line in lines]
