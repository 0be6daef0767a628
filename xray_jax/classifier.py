"""A trained run as a classifier of new images: probabilities, decisions (one class per image,
or one per finding for a multilabel run) and Grad-CAM saliency (`xray_jax.predict` is its
binary).

  classifier = xray_jax.classifier.load("/tmp/xray/run1", checkpoint="best")
  probabilities = classifier(gray_images)
"""

import dataclasses
import functools
import io
import pathlib
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import PIL.Image

from xray_jax import errors, inference, input_pipeline, sharding, tasks, trained
from xray_jax import workdir as workdir_lib
from xray_jax.data import image_check
from xray_jax.data.folder import IMAGE_SUFFIXES
from xray_jax.data.records import Record
from xray_jax.evaluators import calibration, gradcam, metrics, tta


def decision_threshold(class_names: Sequence[str], threshold: float | None) -> float | None:
  """The P(class 1) at which two classes are decided: the operating threshold, else 0.5.
  None beyond two classes (the most probable class is the decision)."""
  if len(class_names) != 2:
    return None
  return 0.5 if threshold is None else threshold


def decision_rule(class_names: Sequence[str], threshold: float | None) -> str:
  """The decision rule in words, for headers and reports."""
  at = decision_threshold(class_names, threshold)
  if at is None:
    return "most probable class"
  source = "operating point" if threshold is not None else "no operating point saved"
  return f"P({class_names[1]}) >= {at:.4g}, {source}"


def decide(probabilities: np.ndarray, class_names: Sequence[str],
           threshold: float | None) -> str:
  """The decided class of one image: by the decision threshold (two classes), else the most
  probable class."""
  at = decision_threshold(class_names, threshold)
  if at is None:
    return class_names[int(np.argmax(probabilities))]
  return class_names[int(probabilities[1] >= at)]


def finding_thresholds(class_names: Sequence[str], thresholds: np.ndarray | None) -> np.ndarray:
  """Each finding's decision threshold [K]: the operating point's, else 0.5."""
  return np.full(len(class_names), 0.5) if thresholds is None else np.asarray(thresholds)


def findings_rule(class_names: Sequence[str], thresholds: np.ndarray | None) -> str:
  """The per-finding decision rule in words, for headers and reports."""
  if thresholds is None:
    return "P(finding) >= 0.5 for each finding, no operating point saved"
  return "P(finding) >= its operating threshold: " + ", ".join(
      f"{name} {t:.4g}" for name, t in zip(class_names, thresholds, strict=True))


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One image's class probabilities and its decided class (a single-label run)."""

  path: str
  probabilities: np.ndarray
  class_names: tuple[str, ...]
  threshold: float | None  # The run's operating threshold, if evaluation chose one.

  @property
  def predicted(self) -> str:
    return decide(self.probabilities, self.class_names, self.threshold)

  @property
  def rule(self) -> str:
    return decision_rule(self.class_names, self.threshold)

  @property
  def rule_thresholds(self) -> dict:
    """The threshold of the rule, as the JSON output names it."""
    return {"threshold": decision_threshold(self.class_names, self.threshold)}

  def as_dict(self) -> dict:
    return {"path": self.path, "predicted": self.predicted,
            **{f"prob_{n}": float(p) for n, p in zip(self.class_names, self.probabilities,
                                                     strict=True)}}


@dataclasses.dataclass(frozen=True)
class FindingsPrediction:
  """One image's probability and decision per finding (a multilabel run)."""

  path: str
  probabilities: np.ndarray  # [K], a sigmoid per finding.
  class_names: tuple[str, ...]
  thresholds: np.ndarray | None  # The run's operating thresholds [K], if evaluation chose them.

  @property
  def is_present(self) -> np.ndarray:
    """Whether each finding is decided present [K]: P >= its threshold."""
    return self.probabilities >= finding_thresholds(self.class_names, self.thresholds)

  @property
  def present(self) -> list[str]:
    """The findings decided present."""
    return [n for n, found in zip(self.class_names, self.is_present, strict=True) if found]

  @property
  def predicted(self) -> str:
    """The findings decided present, ";"-separated ("" for none)."""
    return ";".join(self.present)

  @property
  def rule(self) -> str:
    return findings_rule(self.class_names, self.thresholds)

  @property
  def rule_thresholds(self) -> dict:
    """The thresholds of the rule by finding, as the JSON output names them."""
    return {"thresholds": dict(zip(self.class_names, map(float, finding_thresholds(
        self.class_names, self.thresholds)), strict=True))}

  def as_dict(self) -> dict:
    return {"path": self.path, "predicted": self.predicted,
            **{f"prob_{n}": float(p) for n, p in zip(self.class_names, self.probabilities,
                                                     strict=True)},
            **{f"has_{n}": int(found) for n, found in zip(self.class_names, self.is_present,
                                                          strict=True)}}


class Classifier:
  """A trained model as a function: `classifier(images)` -> probabilities [N, classes] (a
  softmax), or [N, findings] (a sigmoid each) for a multilabel run.

  Images, arrays or files, go through the evaluation pipeline (input_pipeline.Preprocess,
  inference.Predictor), so the same pixels give the same probabilities as `evaluate`.
  With `members` (other runs with the same classes, task and preprocessing), the
  probabilities are the runs' average, an ensemble; Grad-CAM uses `run` alone.
  """

  def __init__(self, run: trained.TrainedRun, batch_size: int = 32,
               mesh: jax.sharding.Mesh | None = None,
               members: Sequence[trained.TrainedRun] = ()):
    trained.check_each_once(run, members)
    self.run = run
    self.class_names = run.class_names
    self.task = tasks.get(run.config)
    self.threshold = trained.load_threshold(run, members)
    self.thresholds = trained.load_thresholds(run, members)  # Multilabel: per finding.
    self.temperature = trained.load_temperature(run, members)
    self._mesh = mesh or sharding.make_mesh()
    self.preprocess = input_pipeline.Preprocess.from_config(run.config.data)
    for member in members:
      if (member.class_names != run.class_names or tasks.get(member.config) != self.task
          or input_pipeline.Preprocess.from_config(member.config.data) != self.preprocess):
        raise errors.DataError(f"{member.workdir}: its classes, task or preprocessing differ "
                               f"from {run.workdir}'s; an ensemble needs the same")
    batch_size = -(-batch_size // self._mesh.size) * self._mesh.size
    views = tta.configured_views(run.config.evaluation)
    self._runs = [run, *members]
    self._predictors = [inference.Predictor(r.model, _in_process(r), batch_size, self._mesh,
                                            views, self.task) for r in self._runs]
    self._saliency = inference.jit_batch_function(functools.partial(_saliency, run.model),
                                                  self._mesh)

  def predict_records(self, records: Sequence[Record]) -> np.ndarray:
    """Probabilities [N, classes or findings] for records (files by "path", or pixels by
    "image"), temperature-scaled if a temperature was fitted."""
    probs = np.mean([predictor(r.variables, records)[0]
                     for predictor, r in zip(self._predictors, self._runs, strict=True)], axis=0)
    return calibration.apply_temperature(probs, self.temperature)

  def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Probabilities [N, classes or findings] for gray images [H, W] (or [H, W, 1 or 3]) of
    any size: uint8, as image files decode, or float in [0, 1], as DICOM pixels are."""
    return self.predict_records([{"path": f"array {i}", "image": np.asarray(x), "label": 0}
                                 for i, x in enumerate(images)])

  def prediction(self, path: str, probabilities: np.ndarray) -> Prediction | FindingsPrediction:
    """One image's probabilities with its decision by the run's rule."""
    if self.task.label_is_vector:
      return FindingsPrediction(path, probabilities, self.class_names, self.thresholds)
    return Prediction(path, probabilities, self.class_names, self.threshold)

  def decisions(self, probabilities: np.ndarray) -> list[str] | list[list[str]]:
    """By the run's decision rule, for each row of `probabilities`: the decided class, or
    (multilabel) the findings decided present."""
    found = [self.prediction("", p) for p in probabilities]
    return [p.present if isinstance(p, FindingsPrediction) else p.predicted for p in found]

  def class_index(self, name: str) -> int:
    """The column of the class or finding `name`; ConfigError listing them if none."""
    if name not in self.class_names:
      kind = "finding" if self.task.label_is_vector else "class"
      raise errors.ConfigError(f"{name!r} is not a {kind} of {self.run.workdir}: expected one "
                               f"of {', '.join(self.class_names)}")
    return self.class_names.index(name)

  def saliency(self, records: Sequence[Record], class_indices: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat maps [N, S, S] in [0, 1] for the given classes (the logit of the given
    findings, for a multilabel run), and the gray images [N, S, S] in [0, 1] (model inputs)
    they belong to."""
    labelled = [{**r, "label": int(c)} for r, c in zip(records, class_indices, strict=True)]
    predictor = self._predictors[0]
    result = inference.map_batches(self._saliency, self.run.variables,
                                   predictor.batches(labelled), self._mesh,
                                   predictor.num_batches(labelled))["output"]
    gray = result["image"][..., 0] * self.preprocess.std + self.preprocess.mean
    return result["heat"], gray


def _in_process(run: trained.TrainedRun) -> ml_collections.ConfigDict:
  """The run's data section, decoding in threads: no worker processes to start per call."""
  data_config = trained.data_config(run.config)
  data_config.num_workers = 0
  return data_config


def _saliency(model, variables: dict, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Grad-CAM of each image's "label" class, with the image."""
  return {"heat": gradcam.grad_cam(model, variables, batch["image"], batch["label"]),
          "image": batch["image"]}


def load(workdir: str | pathlib.Path, checkpoint: str | int = "latest",
         batch_size: int = 32, ensemble: Sequence[str | pathlib.Path] = ()) -> Classifier:
  """The classifier of a training run's checkpoint ("latest", "best" or a step), averaged
  with the `ensemble` members if any: WORKDIR[:CHECKPOINT], by default at `checkpoint`."""
  mesh = sharding.make_mesh()
  members = trained.load_members([str(w) for w in ensemble], checkpoint, mesh)
  return Classifier(trained.load(workdir, checkpoint, mesh), batch_size, mesh, members)


def find_images(paths: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """Files to classify (folders searched recursively) and {path: message} for bad paths."""
  found, failures = [], {}
  for name in paths:
    path = pathlib.Path(name)
    if path.is_dir():
      found.extend(str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
      found.append(str(path))
    else:
      failures[name] = f"{name}: no such file or folder"
  return found, failures


def classify_files(
    classifier: Classifier, paths: Sequence[str], saliency_dir: pathlib.Path | None = None,
    saliency_of: str | None = None,
) -> tuple[list[Prediction | FindingsPrediction], dict[str, str]]:
  """Predictions for the readable files and {path: message} for the others (all files are
  decoded once first, in parallel).

  Grad-CAM overlays go to `saliency_dir`: of the class or finding `saliency_of` if given,
  else of the decided class (NAME_gradcam.png) or, for a multilabel run, of each image's
  most probable finding (NAME_FINDING_gradcam.png).
  """
  target = None if saliency_of is None else classifier.class_index(saliency_of)
  failures = image_check.unreadable_images(
      [{"path": p} for p in paths], classifier.preprocess.image_size,
      classifier.preprocess.dicom_multiframe)
  records = [{"path": p, "label": 0} for p in paths if p not in failures]
  if not records:
    return [], failures
  probs = classifier.predict_records(records)
  predictions = [classifier.prediction(r["path"], row)
                 for r, row in zip(records, probs, strict=True)]
  if saliency_dir is not None:
    if target is not None:
      targets = np.full(len(records), target)
    elif classifier.task.label_is_vector:
      targets = np.argmax(probs, axis=1)
    else:
      targets = np.array([classifier.class_names.index(p.predicted) for p in predictions])
    heat, gray = classifier.saliency(records, targets)
    saliency_dir.mkdir(parents=True, exist_ok=True)
    kept = [r["path"] for r in records]
    for path, image, h, t in zip(kept, gray, heat, targets, strict=True):
      png = io.BytesIO()
      PIL.Image.fromarray(gradcam.overlay(image, h)).save(png, format="PNG")
      finding = classifier.class_names[t] if classifier.task.label_is_vector else None
      workdir_lib.write_atomically(saliency_path(saliency_dir, path, kept, finding),
                                   png.getvalue())
  return predictions, failures


def saliency_path(saliency_dir: pathlib.Path, path: str, all_paths: Sequence[str],
                  finding: str | None = None) -> pathlib.Path:
  """NAME_gradcam.png (NAME_FINDING_gradcam.png with a `finding`), NAME_<index>_... when two
  inputs share a name."""
  stem = pathlib.Path(path).stem
  if sum(pathlib.Path(p).stem == stem for p in all_paths) > 1:
    stem = f"{stem}_{list(all_paths).index(path)}"
  if finding is not None:
    stem = f"{stem}_{metrics.metric_name(finding)}"
  return saliency_dir / f"{stem}_gradcam.png"
