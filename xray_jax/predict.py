r"""Classifies new X-ray images with a trained run.

  python -m xray_jax.predict --workdir=/tmp/xray/run1 [--checkpoint=best] \
      --output=preds.csv [--saliency_dir=out/] [--overwrite] image.png folder/ ...

Images are preprocessed exactly as in evaluation. The table gives each file's class
probabilities and one decision: for two classes, whether the positive probability reaches
the operating threshold chosen on validation (`xray_jax.evaluate --split=val`), or 0.5 when
none was chosen; the header names the rule. Unreadable files are reported and skipped, and
the exit code is then 1. Ctrl-C stops it with status 130, without a partial --output.

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
    Prediction,
    classify_files,
    decision_rule,
    decision_threshold,
    find_images,
    load,
)

FLAGS = flags.FLAGS
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
    workdir_lib.write_atomically(output, format_output(predictions, output.suffix))
    logging.info("Wrote %d predictions to %s", len(predictions), output)
  for message in failures.values():
    print(f"failed: {message}", file=sys.stderr)
  if failures or not paths:
    sys.exit(1 if failures else "error: no images given")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
