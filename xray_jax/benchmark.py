r"""Measures a config's speed: compilation, train and eval images/s, the input pipeline, memory,
and achieved GFLOP/s (of matmuls and convolutions: `model_flops`) against a matmul peak
measured in the same process, and on known accelerators the MFU.

  python -m xray_jax.benchmark --config=configs/pneumonia.py:model=resnet18,res=128 \
      --config.training.global_batch_size=32 --steps=20 --json=/tmp/bench.json
  # with the input pipeline (JPEG decoding and augmentation, as in training)
  python -m xray_jax.benchmark --config=configs/pneumonia_cpu.py --data_dir=/path/to/chest_xray
  # side by side with the PyTorch reference, alternating, 3 rounds
  # (torch from pip install -e '.[bench]')
  python -m xray_jax.benchmark --config=configs/pneumonia.py:model=resnet18,res=128 \
      --config.training.global_batch_size=32 --compare_torch \
      --torch_script=benchmarks/torch_reference.py --rounds=3
  # on a GPU: bfloat16 against PyTorch's fast path (channels-last, autocast, torch.compile)
  python -m xray_jax.benchmark --config=configs/pneumonia.py:model=resnet50 \
      --config.model.dtype=bfloat16 --config.training.global_batch_size=256 --rounds=2 \
      --compare_torch --torch_script=benchmarks/torch_reference.py --torch_args=--device=cuda,--fast
  # where the step's time goes: a profiler trace, summed per HLO instruction and kind
  python -m xray_jax.benchmark --config=configs/pneumonia.py --profile_dir=/tmp/profile
  # how long a checkpoint of the train state takes to save and to become final, 5 times
  python -m xray_jax.benchmark --config=configs/pneumonia_cpu.py --checkpoint_saves=5

Train and eval steps run on random data; `--data_dir` times the grain pipeline on its own.
"""

import json
import os
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from xray_jax import cli
from xray_jax.speed import huge_pages
from xray_jax.speed.checkpoint_speed import checkpoint_speed
from xray_jax.speed.suite import benchmark, format_table, run_torch_reference

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed train steps per round, after `warmup` steps.")
flags.DEFINE_integer("warmup", 2, "Untimed train steps after compilation.")
flags.DEFINE_integer("eval_steps", 10, "Timed eval (inference) batches.")
flags.DEFINE_integer("rounds", 1, "Rounds of timed train steps (alternating with PyTorch).")
flags.DEFINE_integer("num_classes", 2, "Classes of the model's output.")
flags.DEFINE_string("data_dir", "", "Folder dataset (ROOT/train/CLASS/*) to time the input "
                    "pipeline on; empty: skip it.")
flags.DEFINE_integer("input_batches", 20, "Timed batches of the input pipeline, read after "
                     "those its workers buffered.")
flags.DEFINE_string("json", "", "Also write the results to this JSON file.")
flags.DEFINE_bool("compare_torch", False, "Run the PyTorch reference in a subprocess after "
                  "each round with the same model, input size and batch; report the ratio.")
flags.DEFINE_string("torch_script", "", "The plain-PyTorch reference script (its `speed` "
                    "command prints RESULT {json}); required with --compare_torch.")
flags.DEFINE_integer("torch_threads", os.cpu_count() or 1, "--threads of the reference.")
flags.DEFINE_string("torch_python", sys.executable, "Python that has torch installed.")
flags.DEFINE_list("torch_args", [], "More arguments of the reference's speed command, "
                  "comma separated: --device=cuda,--fast for benchmarks/torch_reference.py "
                  "on a GPU.")
flags.DEFINE_bool("huge_pages", False,
                  "Restart with glibc's malloc on transparent huge pages, as `xray_jax.main "
                  "--huge_pages` trains.")
flags.DEFINE_string("profile_dir", "", "Trace `profile_steps` train steps with jax.profiler "
                    "into this folder and report their time per HLO instruction; empty: skip.")
flags.DEFINE_integer("profile_steps", 3, "Train steps in the profiler trace.")
flags.DEFINE_integer("profile_top", 10, "Costliest kinds of HLO instruction, and costliest "
                     "instructions, to report.")
flags.DEFINE_integer("checkpoint_saves", 0, "Instead of the steps: time this many checkpoint "
                     "saves of the config's train state (0: time the steps).")
flags.DEFINE_string("checkpoint_dir", "", "With --checkpoint_saves: the folder to save in "
                    "(put it on the workdir's disk); empty: a temporary folder.")


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.compare_torch and not FLAGS.torch_script:
    raise app.UsageError("--compare_torch needs --torch_script=PATH, the plain-PyTorch "
                         "reference script")
  cli.set_up_process()
  if FLAGS.huge_pages:  # PyTorch's reference inherits the setting.
    huge_pages.restart_with_huge_pages()
  config = FLAGS.config
  torch_reference = None
  if FLAGS.compare_torch:
    torch_reference = lambda: run_torch_reference(
        FLAGS.torch_script, FLAGS.torch_python, config.model.name, config.data.image_size,
        config.training.global_batch_size, FLAGS.steps, FLAGS.torch_threads, FLAGS.torch_args)
  if FLAGS.checkpoint_saves:
    results = checkpoint_speed(config, FLAGS.checkpoint_saves, FLAGS.num_classes,
                               FLAGS.checkpoint_dir)
  else:
    results = benchmark(config, steps=FLAGS.steps, warmup=FLAGS.warmup,
                        eval_steps=FLAGS.eval_steps, rounds=FLAGS.rounds,
                        num_classes=FLAGS.num_classes, data_dir=FLAGS.data_dir,
                        input_batches=FLAGS.input_batches, profile_dir=FLAGS.profile_dir,
                        profile_steps=FLAGS.profile_steps, profile_top=FLAGS.profile_top,
                        torch_reference=torch_reference)
  print(format_table(results))
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
