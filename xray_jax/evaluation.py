"""Sharded inference over a split and the validation metrics computed from it."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from xray_jax import input_pipeline, metrics, sharding
from xray_jax.data.folder import Record


class Evaluator:
  """Predicts class probabilities for fixed records, batch-parallel over the mesh."""

  def __init__(self, model: nn.Module, records: Sequence[Record],
               data_config: ml_collections.ConfigDict, global_batch_size: int,
               mesh: jax.sharding.Mesh):
    self._records = records
    self._mesh = mesh
    self._dataset = input_pipeline.create_eval_dataset(
        records, data_config, global_batch_size, jax.process_index(), jax.process_count())

    def predict_probs(variables, images):
      return jax.nn.softmax(model.apply(variables, images, train=False))

    self._predict = jax.jit(
        predict_probs,
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
        out_shardings=sharding.batch_sharded(mesh))

  def predict(self, variables: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (probabilities [N, classes], labels [N]) for the records, in order."""
    gathered = []
    for local_batch in self._dataset:
      batch = sharding.to_global_batch(local_batch, self._mesh)
      batch["probs"] = self._predict(variables, batch.pop("image"))
      gathered.append(multihost_utils.process_allgather(batch, tiled=True))
    result = {k: np.concatenate([b[k] for b in gathered]) for k in gathered[0]}
    order = np.argsort(result["index"])
    real = order[result["mask"][order] > 0]
    return result["probs"][real], result["label"][real]

  def evaluate(self, state) -> dict[str, float]:
    """Accuracy, loss and ROC AUC of a train state on the records."""
    probs, labels = self.predict({"params": state.params, "batch_stats": state.batch_stats})
    return metrics.summarize(probs, labels)
