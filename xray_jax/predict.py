r"""Classifies new X-ray images with a trained run.

  python -m xray_jax.predict --workdir=/tmp/xray/run1 [--checkpoint=best] \
      --output=preds.csv [--saliency_dir=out/] [--overwrite] image.png folder/ ...

Images are preprocessed exactly as in evaluation. The table gives each file's class
probabilities and one decision: for two classes, whether the positive probability reaches
the operating threshold chosen on validation (`xray_jax.evaluate --split=val`), or 0.5 when
none was chosen; the header names the rule. Unreadable files are reported and skipped, and
the exit code is then 1.

From Python: `classifier = xray_jax.predict.load(workdir); probs = classifier(images)`.
"""

import csv
import dataclasses
import functools
import io
import json
import pathlib
import sys
from collections.abc import Sequence

import jax
import numpy as np
import PIL.Image
from absl import app, flags, logging

from xray_jax import (
    calibration,
    cli,
    errors,
    gradcam,
    input_pipeline,
    logs,
    sharding,
    trained,
    tta,
)
from xray_jax.data.folder import IMAGE_SUFFIXES

FLAGS = flags.FLAGS


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


@dataclasses.dataclass(frozen=True)
class Prediction:
  path: str
  probabilities: np.ndarray
  class_names: tuple[str, ...]
  threshold: float | None  # The run's operating threshold, if evaluation chose one.

  @property
  def predicted(self) -> str:
    """The decision: by the operating threshold (two classes), else the most probable."""
    at = decision_threshold(self.class_names, self.threshold)
    if at is None:
      return self.class_names[int(np.argmax(self.probabilities))]
    return self.class_names[int(self.probabilities[1] >= at)]

  def as_dict(self) -> dict:
    return {"path": self.path, "predicted": self.predicted,
            **{f"prob_{n}": float(p) for n, p in zip(self.class_names, self.probabilities,
                                                     strict=True)}}


class Classifier:
  """A trained model as a function: `classifier(images)` -> probabilities [N, classes].

  With `members` (other runs with the same classes and preprocessing), the probabilities
  are the runs' average, an ensemble; Grad-CAM uses `run` alone.
  """

  def __init__(self, run: trained.TrainedRun, batch_size: int = 32,
               mesh: jax.sharding.Mesh | None = None,
               members: Sequence[trained.TrainedRun] = ()):
    self.run = run
    self.class_names = run.class_names
    self.threshold = trained.load_threshold(run, members)
    self.temperature = trained.load_temperature(run, members)
    self._mesh = mesh or sharding.make_mesh()
    self._batch_size = -(-batch_size // self._mesh.size) * self._mesh.size
    self._preprocess = input_pipeline.Preprocess.from_config(run.config.data)
    for member in members:
      if (member.class_names != run.class_names or input_pipeline.Preprocess.from_config(
          member.config.data) != self._preprocess):
        raise errors.DataError(f"{member.workdir}: its classes or preprocessing differ from "
                               f"{run.workdir}'s; an ensemble needs the same")
    replicated = sharding.replicated(self._mesh)
    batch = sharding.batch_sharded(self._mesh)
    views = tta.configured_views(run.config.evaluation)
    self._runs = [run, *members]
    self._probs = [jax.jit(tta.predict_function(r.model, views),
                           in_shardings=(replicated, batch), out_shardings=replicated)
                   for r in self._runs]
    self._saliency = jax.jit(functools.partial(gradcam.grad_cam, run.model),
                             in_shardings=(replicated, batch, batch), out_shardings=replicated)

  def model_input(self, image: np.ndarray) -> np.ndarray:
    """A gray image [H, W] (or [H, W, 1 or 3]), uint8 or float in [0, 1], as model input:
    resized, standardized and normalized as image files are."""
    return self._preprocess({"image": np.asarray(image), "label": 0})["image"]

  def _batched(self, function, variables, inputs: np.ndarray, *extra: np.ndarray) -> np.ndarray:
    outputs = []
    for start in range(0, len(inputs), self._batch_size):
      chunk = [x[start:start + self._batch_size] for x in (inputs, *extra)]
      padding = -len(chunk[0]) % self._mesh.size
      padded = [np.concatenate([x, np.repeat(x[:1], padding, axis=0)]) for x in chunk]
      result = function(variables, *(
          jax.device_put(x, sharding.batch_sharded(self._mesh)) for x in padded))
      outputs.append(np.asarray(result)[:len(chunk[0])])
    return np.concatenate(outputs)

  def predict_inputs(self, inputs: np.ndarray) -> np.ndarray:
    """Probabilities for preprocessed inputs [N, S, S, C] (temperature-scaled if fitted)."""
    probs = np.mean([self._batched(function, r.variables, inputs)
                     for function, r in zip(self._probs, self._runs, strict=True)], axis=0)
    return calibration.apply_temperature(probs, self.temperature)

  def saliency(self, inputs: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """Grad-CAM heat maps [N, S, S] in [0, 1] for the given classes."""
    return self._batched(self._saliency, self.run.variables, inputs,
                         class_indices.astype(np.int32))

  def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    return self.predict_inputs(np.stack([self.model_input(x) for x in images]))

  def load_file(self, path: str) -> np.ndarray:
    """A file decoded and preprocessed as in evaluation."""
    return self._preprocess({"path": path, "label": 0})["image"]

  def display_image(self, model_input: np.ndarray) -> np.ndarray:
    """The gray image [S, S] in [0, 1] behind a model input."""
    return model_input[..., 0] * self._preprocess.std + self._preprocess.mean


def load(workdir: str | pathlib.Path, checkpoint: str | int = "latest",
         batch_size: int = 32, ensemble: Sequence[str | pathlib.Path] = ()) -> Classifier:
  """The classifier of a training run's checkpoint ("latest", "best" or a step), averaged
  with the same checkpoint of the `ensemble` workdirs if any."""
  mesh = sharding.make_mesh()
  members = [trained.load(w, checkpoint, mesh) for w in ensemble]
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
) -> tuple[list[Prediction], dict[str, str]]:
  """Predictions for the readable files and {path: message} for the others; Grad-CAM
  overlays of the predicted class go to `saliency_dir` as NAME_gradcam.png."""
  inputs, kept, failures = [], [], {}
  for path in paths:
    try:
      inputs.append(classifier.load_file(path))
      kept.append(path)
    except errors.DataError as e:
      failures[path] = str(e)
  if not kept:
    return [], failures
  inputs = np.stack(inputs)
  probs = classifier.predict_inputs(inputs)
  predictions = [Prediction(p, row, classifier.class_names, classifier.threshold)
                 for p, row in zip(kept, probs, strict=True)]
  if saliency_dir is not None:
    heat = classifier.saliency(inputs, probs.argmax(axis=1))
    saliency_dir.mkdir(parents=True, exist_ok=True)
    for path, x, h in zip(kept, inputs, heat, strict=True):
      picture = gradcam.overlay(classifier.display_image(x), h)
      PIL.Image.fromarray(picture).save(saliency_path(saliency_dir, path, kept))
  return predictions, failures


def saliency_path(saliency_dir: pathlib.Path, path: str, all_paths: Sequence[str]) -> pathlib.Path:
  """NAME_gradcam.png, or NAME_<index>_gradcam.png when two inputs share a name."""
  stem = pathlib.Path(path).stem
  if sum(pathlib.Path(p).stem == stem for p in all_paths) > 1:
    stem = f"{stem}_{list(all_paths).index(path)}"
  return saliency_dir / f"{stem}_gradcam.png"


def format_output(predictions: Sequence[Prediction], suffix: str) -> str:
  """CSV or JSON text of the predictions; both name the decision rule (the CSV in the
  `predicted` column's header)."""
  first = predictions[0]
  rule = decision_rule(first.class_names, first.threshold)
  rows = [p.as_dict() for p in predictions]
  if suffix == ".json":
    return json.dumps({"decision": rule,
                       "threshold": decision_threshold(first.class_names, first.threshold),
                       "predictions": rows}, indent=1)
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow([f"predicted ({rule})" if k == "predicted" else k for k in rows[0]])
  writer.writerows(row.values() for row in rows)
  return buffer.getvalue()


def format_table(predictions: Sequence[Prediction]) -> str:
  """A fixed-width table for the terminal."""
  if not predictions:
    return "(nothing classified)"
  names = predictions[0].class_names
  width = max(len(p.path) for p in predictions)
  header = (f"{'file':<{width}}  {'predicted':<12}"
            + "".join(f"  {'P(' + n + ')':>14}" for n in names))
  lines = [f"decision: {decision_rule(names, predictions[0].threshold)}", header]
  lines += [f"{p.path:<{width}}  {p.predicted:<12}"
            + "".join(f"  {q:>14.4f}" for q in p.probabilities) for p in predictions]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  logs.quiet_library_logs()
  output = pathlib.Path(FLAGS.output) if FLAGS.output else None
  saliency_dir = pathlib.Path(FLAGS.saliency_dir) if FLAGS.saliency_dir else None
  try:
    if output is not None and output.suffix not in (".csv", ".json"):
      raise errors.ConfigError(f"--output={output}: expected a .csv or .json file name")
    if output is not None and output.exists() and not FLAGS.overwrite:
      raise errors.ConfigError(f"--output={output} exists; pass --overwrite to replace it")
    if (saliency_dir is not None and saliency_dir.is_dir() and any(saliency_dir.iterdir())
        and not FLAGS.overwrite):
      raise errors.ConfigError(
          f"--saliency_dir={saliency_dir} is not empty; pass --overwrite to write into it")
    paths, failures = find_images(argv[1:])
    classifier = load(FLAGS.workdir, FLAGS.checkpoint, FLAGS.batch_size, FLAGS.ensemble)
    predictions, unreadable = classify_files(classifier, paths, saliency_dir)
  except errors.XrayError as e:
    sys.exit(f"error: {e}")
  failures.update(unreadable)
  print(format_table(predictions))
  if output is not None and predictions:  # Nothing classified: no file to block a retry.
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(format_output(predictions, output.suffix))
    logging.info("Wrote %d predictions to %s", len(predictions), output)
  for message in failures.values():
    print(f"failed: {message}", file=sys.stderr)
  if failures or not paths:
    sys.exit(1 if failures else "error: no images given")


def define_flags() -> None:
  """Flags exist only when this module runs as a program (or a test asks), so importing
  it for `load` adds none to the importer's flags."""
  flags.DEFINE_string("workdir", None, "Workdir of the training run.")
  flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.")
  flags.DEFINE_string("output", None, "Write predictions to this .csv or .json file.")
  flags.DEFINE_string("saliency_dir", None, "Write Grad-CAM overlays (PNG) here.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output.")
  flags.DEFINE_integer("batch_size", 32, "Images per inference batch.")
  flags.DEFINE_list("ensemble", [], "Other workdirs whose probabilities are averaged with "
                    "--workdir's (same classes and preprocessing); the threshold is the one "
                    "`evaluate --ensemble` chose for the same members.")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
