r"""Trains an X-ray classifier.

  python -m xray_jax.main --config=configs/pneumonia.py --workdir=/tmp/xray/run1 \
      --config.data.dir=/path/to/chest_xray

Running the same command again resumes from the last checkpoint in the workdir.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from xray_jax import errors, logs, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process training: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process training: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process training: this process's index.")
flags.DEFINE_bool("auto_distributed", False,
                  "Initialize jax.distributed from the cluster's environment (TPU VMs, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  """Joins a multi-process job when the flags ask for one; all processes run this binary."""
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  elif FLAGS.auto_distributed:
    jax.distributed.initialize()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  _initialize_distributed()
  logging.info("JAX process %d of %d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.XrayError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
