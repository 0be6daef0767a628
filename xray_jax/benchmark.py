r"""Measures train-step throughput (images/s) of a config on random data.

  python -m xray_jax.benchmark --config=configs/pneumonia.py:res=128 --steps=20

Data loading is left out: this times the jit-compiled step alone, as the trainer runs it.
"""

import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from xray_jax import models, optimizers, sharding, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps, after two warm-up steps.")
flags.DEFINE_integer("num_classes", 2, "Classes of the model's output.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  del argv
  config = FLAGS.config
  mesh = sharding.make_mesh()
  batch_size = config.training.global_batch_size
  size, channels = config.data.image_size, 1 if config.data.grayscale else 3
  model = models.create_model(config.model, FLAGS.num_classes)
  schedule = optimizers.create_learning_rate_schedule(config.optimizer, 100, 1000)
  tx = optimizers.create_optimizer(config.optimizer, schedule)
  state = train.create_train_state(model, tx, (size, size, channels), 0, mesh)
  step = train.make_train_step(mesh, schedule)
  rng = np.random.default_rng(0)
  batch = sharding.to_global_batch({
      "image": rng.normal(size=(batch_size, size, size, channels)).astype(np.float32),
      "label": rng.integers(0, FLAGS.num_classes, batch_size).astype(np.int32)}, mesh)
  start = time.perf_counter()
  for _ in range(2):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  print(f"{config.model.name} @{size} batch {batch_size} on {mesh.size} "
        f"{jax.devices()[0].platform} device(s): {FLAGS.steps * batch_size / elapsed:.1f} "
        f"images/s ({1e3 * elapsed / FLAGS.steps:.0f} ms/step; first 2 steps {compile_s:.1f} s)")


if __name__ == "__main__":
  app.run(main)
