r"""Trains an X-ray classifier.

  python -m xray_jax.main --config=configs/pneumonia.py --workdir=/tmp/xray/run1 \
      --config.data.dir=/path/to/chest_xray

Running the same command again resumes from the last checkpoint in the workdir. On SIGTERM
(a preemption or time-limit notice) it saves a checkpoint and exits with status 75, which
the launchers in launch/ treat as "resubmit".
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from xray_jax import errors, logs, preemption, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process training: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process training: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process training: this process's index.")
flags.DEFINE_bool("auto_distributed", False,
                  "Initialize jax.distributed from the cluster's environment (TPU VMs, SLURM).")
flags.DEFINE_list("local_device_ids", None,
                  "Multi-process training: the local GPUs this process uses (default: all of "
                  "them, or under SLURM the one numbered SLURM_LOCALID).")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  """Joins a multi-process job when the flags ask for one; all processes run this binary."""
  local_device_ids = FLAGS.local_device_ids and [int(i) for i in FLAGS.local_device_ids]
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id, local_device_ids=local_device_ids)
  elif FLAGS.auto_distributed:
    jax.distributed.initialize(local_device_ids=local_device_ids)


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
  except errors.Preempted as e:
    logging.warning("%s (exit status %d)", e, preemption.RESUBMIT_EXIT_CODE)
    sys.exit(preemption.RESUBMIT_EXIT_CODE)


if __name__ == "__main__":
  app.run(main)
