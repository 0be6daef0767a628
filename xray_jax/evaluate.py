r"""Evaluates checkpoints of a training run, as a separate job.

  python -m xray_jax.evaluate --workdir=/tmp/xray/run1 [--config=configs/pneumonia.py] \
      [--split=val|test|NAME] [--checkpoint=best|latest|STEP] \
      [--watch | --stress | --ensemble=W2[:CHECKPOINT],W3,...] \
      [--compare=OTHER_WORKDIR[:CHECKPOINT]]
  python -m xray_jax.evaluate --workdir=/tmp/xray/run1 --config=SOURCE_CONFIG \
      --label_map=OUTPUT=LABEL,... [--split=val|test|NAME]

The model and preprocessing come from the run's saved config.json; --config, if given, only
supplies the `evaluation` section (operating-point method, calibration bins), and with
--label_map also the data source to evaluate on (its `data` section and `task`; the run's
outputs scored against that source's labels). Reports, predictions and figures go to
WORKDIR/eval/; multilabel runs get per-finding reports. --stress re-evaluates the validation
split under controlled acquisition shifts (xray_jax.evaluators.stress). Binary and per-finding
reports carry bootstrap intervals; --compare pairs this run (or its --ensemble) with another
on the same images.
Ctrl-C stops it with status 130; each report, table and figure is written whole or not at all.
"""

import pathlib
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from xray_jax import cli, config_checks, errors, sharding, tasks, trained
from xray_jax.evaluators import cross_dataset, evaluation, stress

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of the training run.")
config_flags.DEFINE_config_file(
    "config", None, "Optional config file; only its `evaluation` section is used (with "
    "--label_map also its `data` section and `task`: the source to evaluate on).",
    lock_config=True)
flags.DEFINE_string("split", "val", "Split to evaluate: val, test or a named set of the run's "
                    "config.data.eval_sets.")
flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.")
flags.DEFINE_string("data_dir", None, "Read the images from here instead of the saved "
                    "config's data.dir (same layout).")
flags.DEFINE_bool("watch", False, "Evaluate every new checkpoint until the final step.")
flags.DEFINE_bool("stress", False, "Stress test: the validation split under acquisition shifts "
                  "(exposure, contrast, blur, noise, JPEG, resolution, framing), 3 severities "
                  "each; writes eval/stress_step{N}.json and .png.")
flags.DEFINE_integer("stress_seed", 0, "--stress: seeds the noise shift.")
flags.DEFINE_list("ensemble", [], "Runs whose probabilities are averaged with --workdir's: "
                  "each WORKDIR[:CHECKPOINT] (default --checkpoint), another run on the same "
                  "validation images or another checkpoint of this one; writes "
                  "eval/ensemble_* in --workdir.")
flags.DEFINE_string("compare", None, "Another run's workdir, optionally :CHECKPOINT (default "
                    "--checkpoint): both evaluated on --split's images, then each figure's "
                    "paired difference with its bootstrap interval (of the --ensemble with "
                    "--workdir if given); writes eval/[ensemble_]compare_*.json.")
flags.DEFINE_string("label_map", None, "Evaluate on another data source, the one --config "
                    "describes, read with the run's preprocessing: comma-separated "
                    "OUTPUT=LABEL pairs, each a class or finding of the run and a class or "
                    "finding of that source, e.g. Pneumonia=PNEUMONIA; writes "
                    "eval/cross_{SOURCE}_{split}_step{N}.json, _predictions.csv and _roc.png.")
flags.DEFINE_float("poll_seconds", 30.0, "--watch: seconds between looks at the workdir.")
flags.DEFINE_float("timeout_seconds", 3600.0,
                   "--watch: give up after this long without a new checkpoint.")
flags.mark_flags_as_required(["workdir"])


def _evaluation_config(workdir) -> ml_collections.ConfigDict:
  """The `evaluation` section: from --config if given, else from the run's config.json."""
  saved = trained.load_config(workdir)
  config = FLAGS.config if FLAGS.config is not None else saved
  if "evaluation" not in config:
    raise errors.ConfigError("config.evaluation is missing: pass --config=<config file>")
  config_checks.check_evaluation_config(config.evaluation, tasks.get(saved))
  return config.evaluation


def _members(mesh) -> list[trained.TrainedRun]:
  """The members of --ensemble, each at its checkpoint or --checkpoint."""
  return trained.load_members(FLAGS.ensemble, FLAGS.checkpoint, mesh)


@cli.exit_on_interrupt("reports are written whole or not at all; the evaluation in progress "
                       "wrote none")
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.set_up_process()
  try:
    workdir = pathlib.Path(FLAGS.workdir)
    if FLAGS.stress and (FLAGS.watch or FLAGS.split != "val"):
      raise app.UsageError("--stress evaluates the validation split: no --watch, --split=val")
    if FLAGS.ensemble and (FLAGS.stress or FLAGS.watch):
      raise app.UsageError("--ensemble evaluates one checkpoint: no --stress or --watch")
    if FLAGS.compare and (FLAGS.stress or FLAGS.watch):
      raise app.UsageError("--compare pairs two checkpoints: no --stress or --watch")
    if FLAGS.label_map is not None and (FLAGS.stress or FLAGS.watch or FLAGS.compare
                                        or FLAGS.config is None):
      raise app.UsageError("--label_map evaluates one checkpoint on the data source of "
                           "--config: give --config; no --stress, --watch or --compare")
    if FLAGS.watch:  # Started beside the trainer, perhaps before it.
      trained.wait_for_config(workdir, FLAGS.poll_seconds, FLAGS.timeout_seconds)
    evaluation_config = _evaluation_config(workdir)
    if FLAGS.stress:
      stress.stress_test(FLAGS.workdir, FLAGS.checkpoint, evaluation_config, FLAGS.data_dir,
                         seed=FLAGS.stress_seed)
    elif FLAGS.watch:
      evaluation.watch(FLAGS.workdir, FLAGS.split, evaluation_config, FLAGS.data_dir,
                       FLAGS.poll_seconds, FLAGS.timeout_seconds)
    elif FLAGS.label_map is not None:
      label_map = cross_dataset.parse_label_map(FLAGS.label_map)
      mesh = sharding.make_mesh()
      cross_dataset.evaluate_on_source(FLAGS.workdir, FLAGS.config, FLAGS.split,
                                       FLAGS.checkpoint, evaluation_config, label_map,
                                       FLAGS.data_dir, mesh, _members(mesh))
    elif FLAGS.compare:
      other, other_checkpoint = trained.parse_run(FLAGS.compare, FLAGS.checkpoint)
      mesh = sharding.make_mesh()
      evaluation.compare_runs(FLAGS.workdir, other, FLAGS.split,
                              (FLAGS.checkpoint, other_checkpoint),
                              evaluation_config, FLAGS.data_dir, mesh, _members(mesh))
    else:
      mesh = sharding.make_mesh()
      evaluation.evaluate_checkpoint(FLAGS.workdir, FLAGS.split, FLAGS.checkpoint,
                                     evaluation_config, FLAGS.data_dir, mesh, _members(mesh))
  except errors.XrayError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
