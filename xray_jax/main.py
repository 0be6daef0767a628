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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  logging.info("JAX process %d of %d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.XrayError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
