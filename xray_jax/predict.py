r"""Classifies new X-ray images with a trained run.

  python -m xray_jax.predict --workdir=/tmp/xray/run1 [--checkpoint=best] \
      --output=preds.csv [--saliency_dir=out/ [--saliency_of=NAME]] [--overwrite] \
      image.png folder/ ...

Images are preprocessed exactly as in evaluation. The table gives each file's class
probabilities and one decision: for two classes, whether the positive probability reaches
the operating threshold chosen on validation (`xray_jax.evaluate --split=val`), or 0.5 when
none was chosen; the header names the rule. A multilabel run decides each finding by its own
threshold (0.5 when none was chosen): the table lists the findings decided present, the
output each finding's probability (prob_NAME) and decision (has_NAME, 1 or 0). Unreadable
files are reported and skipped, and the exit code is then 1. Ctrl-C stops it with status 130,
without a partial --output.

From Python: `xray_jax.classifier` (this binary's library).
"""

import csv
import io
import json
import pathlib
import sys
from collections.abc import Sequence

from absl import app, flags, logging

from xray_jax import cli, errors
from xray_jax import workdir as workdir_lib
from xray_jax.classifier import (
    FindingsPrediction,
    Prediction,
    classify_files,
    find_images,
    load,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of the training run.")
flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.")
flags.DEFINE_string("output", None, "Write predictions to this .csv or .json file.")
flags.DEFINE_string("saliency_dir", None, "Write Grad-CAM overlays (PNG) here.")
flags.DEFINE_string("saliency_of", None, "--saliency_dir: Grad-CAM of this finding (or class) "
                    "for every image, instead of each image's most probable finding (or "
                    "decided class).")
flags.DEFINE_bool("overwrite", False, "Replace an existing output.")
flags.DEFINE_integer("batch_size", 32, "Images per inference batch.")
flags.DEFINE_list("ensemble", [], "Runs whose probabilities are averaged with --workdir's "
                  "(same classes and preprocessing), each WORKDIR[:CHECKPOINT] (default "
                  "--checkpoint); the threshold is the one `evaluate --ensemble` chose for "
                  "the same members.")
flags.mark_flags_as_required(["workdir"])


def format_output(predictions: Sequence[Prediction | FindingsPrediction], suffix: str) -> str:
  """CSV or JSON text of the predictions; both name the decision rule (the CSV in the
  `predicted` column's header)."""
  first = predictions[0]
  rows = [p.as_dict() for p in predictions]
  if suffix == ".json":
    return json.dumps({"decision": first.rule, **first.rule_thresholds, "predictions": rows},
                      indent=1)
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow([f"predicted ({first.rule})" if k == "predicted" else k for k in rows[0]])
  writer.writerows(row.values() for row in rows)
  return buffer.getvalue()


def format_table(predictions: Sequence[Prediction | FindingsPrediction]) -> str:
  """A fixed-width table for the terminal: each file's decided class and class
  probabilities, or (multilabel) the findings decided present with their probabilities."""
  if not predictions:
    return "(nothing classified)"
  first = predictions[0]
  width = max(len(p.path) for p in predictions)
  if isinstance(first, FindingsPrediction):
    lines = [f"decision: {first.rule}", f"{'file':<{width}}  findings present"]
    lines += [f"{p.path:<{width}}  " + (", ".join(
        f"{name} {q:.4f}" for name, q, found in zip(p.class_names, p.probabilities,
                                                    p.is_present, strict=True) if found)
        or "none") for p in predictions]
    return "\n".join(lines)
  header = (f"{'file':<{width}}  {'predicted':<12}"
            + "".join(f"  {'P(' + n + ')':>14}" for n in first.class_names))
  lines = [f"decision: {first.rule}", header]
  lines += [f"{p.path:<{width}}  {p.predicted:<12}"
            + "".join(f"  {q:>14.4f}" for q in p.probabilities) for p in predictions]
  return "\n".join(lines)


@cli.exit_on_interrupt("--output is written only once every image is classified, and "
                       "each overlay whole or not at all")
def main(argv: list[str]) -> None:
  cli.set_up_process()
  output = pathlib.Path(FLAGS.output) if FLAGS.output else None
  saliency_dir = pathlib.Path(FLAGS.saliency_dir) if FLAGS.saliency_dir else None
  try:
    if output is not None and output.suffix not in (".csv", ".json"):
      raise errors.ConfigError(f"--output={output}: expected a .csv or .json file name")
    if output is not None and output.exists() and not FLAGS.overwrite:
      raise errors.ConfigError(f"--output={output} exists; pass --overwrite to replace it")
    if FLAGS.saliency_of is not None and saliency_dir is None:
      raise errors.ConfigError("--saliency_of chooses what the Grad-CAM overlays show: it "
                               "needs --saliency_dir")
    if (saliency_dir is not None and saliency_dir.is_dir() and any(saliency_dir.iterdir())
        and not FLAGS.overwrite):
      raise errors.ConfigError(
          f"--saliency_dir={saliency_dir} is not empty; pass --overwrite to write into it")
    paths, failures = find_images(argv[1:])
    classifier = load(FLAGS.workdir, FLAGS.checkpoint, FLAGS.batch_size, FLAGS.ensemble)
    predictions, unreadable = classify_files(classifier, paths, saliency_dir,
                                             FLAGS.saliency_of)
  except errors.XrayError as e:
    sys.exit(f"error: {e}")
  failures.update(unreadable)
  print(format_table(predictions))
  if output is not None and predictions:  # Nothing classified: no file to block a retry.
    workdir_lib.write_atomically(output, format_output(predictions, output.suffix))
    logging.info("Wrote %d predictions to %s", len(predictions), output)
  for message in failures.values():
    print(f"failed: {message}", file=sys.stderr)
  if failures or not paths:
    sys.exit(1 if failures else "error: no images given")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
