"""Batched inference over records, sharded over the mesh: the one path by which validation,
evaluation, the stress test, predict and the Python API run a model on images."""

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from xray_jax import input_pipeline, sharding, tasks
from xray_jax.data import shifts
from xray_jax.data.records import Record
from xray_jax.evaluators import tta

# (variables, batch {"image": [B, S, S, C], ...}) -> a pytree of per-example arrays [B, ...].
BatchFunction = Callable[[dict[str, Any], dict[str, jax.Array]], Any]


def jit_batch_function(function: BatchFunction, mesh: jax.sharding.Mesh) -> BatchFunction:
  """`function` compiled for replicated variables and batch-sharded inputs and outputs."""
  return jax.jit(function, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=sharding.batch_sharded(mesh))


def map_batches(function: BatchFunction, variables: dict[str, Any],
                local_batches: Iterable[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
                num_batches: int) -> dict[str, Any]:
  """Runs a jitted `function` on every global batch (this process's `local_batches`,
  assembled over the mesh, as create_eval_dataset makes them).

  Returns {"output": the outputs, and every other field of the batches but the images
  (such as "label")}, gathered on every process, in record order, without the padding.
  A progress bar shows on a terminal.
  """
  gathered = []
  bar = tqdm.tqdm(local_batches, desc="predicting", unit="batch", leave=False, total=num_batches,
                  dynamic_ncols=True, file=sys.stdout,
                  disable=jax.process_index() != 0 or not sys.stdout.isatty())
  for local_batch in bar:
    batch = sharding.to_global_batch(local_batch, mesh)
    fields = {k: v for k, v in batch.items() if k != "image"}
    gathered.append(multihost_utils.process_allgather(
        {**fields, "output": function(variables, batch)}, tiled=True))
  merged = jax.tree.map(lambda *parts: np.concatenate(parts), *gathered)
  order = np.argsort(merged["index"])
  real = order[merged["mask"][order] > 0]
  return jax.tree.map(lambda x: x[real],
                      {k: v for k, v in merged.items() if k not in ("index", "mask")})


class Predictor:
  """Probabilities of a model's `task` (softmax over classes, or sigmoid per finding) for
  any records, averaged over test-time `views`, in batches of `global_batch_size` over the
  mesh, preprocessed by `data_config`."""

  def __init__(self, model: nn.Module, data_config: ml_collections.ConfigDict,
               global_batch_size: int, mesh: jax.sharding.Mesh, views: tuple[str, ...] = (),
               task: tasks.Task = tasks.SINGLE_LABEL):
    self.data_config = data_config
    self.global_batch_size = global_batch_size
    self.mesh = mesh
    self._probabilities = jit_batch_function(
        lambda variables, batch: tta.probabilities(model, variables, batch["image"], views,
                                                   task), mesh)

  def batches(self, records: Sequence[Record], shift: shifts.Shift | None = None,
              ) -> Iterable[dict[str, np.ndarray]]:
    """This process's share of the padded evaluation batches of `records`."""
    return input_pipeline.create_eval_dataset(
        records, self.data_config, self.global_batch_size, jax.process_index(),
        jax.process_count(), shift)

  def num_batches(self, records: Sequence[Record]) -> int:
    return math.ceil(len(records) / self.global_batch_size)

  def __call__(self, variables: dict[str, Any], records: Sequence[Record],
               shift: shifts.Shift | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, classes], labels [N], or [N, findings] for multilabel) for
    `records`, in order, with the images under an acquisition `shift` if given."""
    result = map_batches(self._probabilities, variables, self.batches(records, shift), self.mesh,
                         self.num_batches(records))
    return result["output"], result["label"]


class Evaluator:
  """Validation inside the training loop: a Predictor on fixed records, and the metrics of
  its `task` (per finding of `class_names` too, for multilabel)."""

  def __init__(self, model: nn.Module, records: Sequence[Record],
               data_config: ml_collections.ConfigDict, global_batch_size: int,
               mesh: jax.sharding.Mesh, views: tuple[str, ...] = (),
               task: tasks.Task = tasks.SINGLE_LABEL, class_names: Sequence[str] = ()):
    self._records = records
    self._task, self._class_names = task, class_names
    self._predictor = Predictor(model, data_config, global_batch_size, mesh, views, task)

  def predict(self, variables: dict[str, Any], shift: shifts.Shift | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) for the records, in order (`Predictor.__call__`)."""
    return self._predictor(variables, self._records, shift)

  def evaluate(self, variables: dict[str, Any]) -> dict[str, float]:
    """Accuracy, loss and ROC AUC of model variables on the records (`Task.summarize`)."""
    return self._task.summarize(*self.predict(variables), self._class_names)
