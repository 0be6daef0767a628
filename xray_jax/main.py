r"""Trains an X-ray classifier.

  python -m xray_jax.main --config=configs/pneumonia.py --workdir=/tmp/xray/run1 \
      --config.data.dir=/path/to/chest_xray

Running the same command again resumes from the last checkpoint in the workdir. On SIGTERM
(a preemption or time-limit notice) it saves a checkpoint and exits with status 75, which
the launchers in launch/ treat as "resubmit"; on Ctrl-C it saves one and exits with 130 (a
second Ctrl-C stops it at once, keeping the last complete checkpoint).

Config files take arguments after a colon, comma separated: `runlocal` (a one-minute smoke
run: tiny model, few steps), `model=cnn|resnet18|resnet34|resnet50|densenet121`, `res=N`
(input size), e.g. --config=configs/pneumonia.py:model=resnet18,res=128. Any field can be
overridden, e.g. --config.training.num_epochs=5. --print_config lists every field with its
value and its meaning.
"""

import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from xray_jax import cli, config_help, errors, interrupts, preemption, train
from xray_jax.speed import huge_pages

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
flags.DEFINE_bool("huge_pages", False,
                  "Restart with glibc's malloc on transparent huge pages (fewer page faults "
                  "per step on CPU; see docs/speed.md).")
flags.DEFINE_bool("print_config", False,
                  "Print every field of the resolved config, with its comment, and exit.")
flags.mark_flags_as_required(["config"])

_CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
if _CONFIG_DIR.is_dir():  # A source checkout: --help lists its config files.
  __doc__ += f"\nConfig files:\n{config_help.list_configs(_CONFIG_DIR)}\n"


def _initialize_distributed() -> None:
  """Joins a multi-process job when the flags ask for one; all processes run this binary."""
  local_device_ids = FLAGS.local_device_ids and [int(i) for i in FLAGS.local_device_ids]
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id, local_device_ids=local_device_ids)
  elif FLAGS.auto_distributed:
    jax.distributed.initialize(local_device_ids=local_device_ids)


@cli.exit_on_interrupt("stopped outside the training loop, without a new checkpoint; run "
                       "the same command again to resume")
def run_job(argv: list[str], job: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """The body of a training binary's `main`: handles the flags defined here (--print_config,
  --workdir, --huge_pages, the multi-process ones), then runs `job(config, workdir)`; a
  one-line error exits with status 1, a preemption with status 75, Ctrl-C with 130."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.print_config:
    config_file = pathlib.Path(FLAGS["config"].config_filename.split(":")[0])
    print(config_help.describe(FLAGS.config, config_file))
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  cli.set_up_process()
  if FLAGS.huge_pages:
    huge_pages.restart_with_huge_pages()
  _initialize_distributed()
  logging.info("JAX process %d of %d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    job(FLAGS.config, FLAGS.workdir)
  except errors.XrayError as e:
    sys.exit(f"error: {e}")
  except errors.Preempted as e:  # errors.Interrupted too.
    status = (interrupts.INTERRUPT_EXIT_CODE if isinstance(e, errors.Interrupted)
              else preemption.RESUBMIT_EXIT_CODE)
    logging.warning("%s (exit status %d)", e, status)
    sys.exit(status)


def main(argv: list[str]) -> None:
  run_job(argv, train.train_and_evaluate)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
