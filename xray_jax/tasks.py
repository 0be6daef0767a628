"""What a model predicts (`config.task`): one class per image, a softmax over the classes
(single_label), or one sigmoid per finding (multilabel). Training, validation and inference
ask the task instead of branching on it."""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xray_jax import errors, losses
from xray_jax import labels as labels_lib
from xray_jax.data.records import Record
from xray_jax.evaluators import metrics


def argmax_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The share of examples whose highest logit is their class."""
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def finding_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The share of present finding labels [B, K] that the logit's sign gets right."""
  is_present = labels_lib.present(labels)
  correct = is_present & ((logits > 0) == (labels == 1))
  return jnp.sum(correct) / jnp.maximum(jnp.sum(is_present), 1)


def _class_summary(probs: np.ndarray, labels: np.ndarray,
                   class_names: Sequence[str]) -> dict[str, float]:
  """`metrics.summarize`, which needs no class names."""
  del class_names
  return metrics.summarize(probs, labels)


def _same_label(label: labels_lib.Label, policy: str) -> labels_lib.Label:
  """A class index: no label of one is uncertain."""
  del policy
  return label


@dataclasses.dataclass(frozen=True)
class Task:
  """The functions in which the tasks differ."""

  name: str
  probabilities: Callable[[jax.Array], jax.Array]  # Logits [N, C] -> probabilities [N, C].
  accuracy: Callable[[jax.Array, jax.Array], jax.Array]  # The train step's (logits, labels).
  # (config.loss, the training labels, the number of classes) -> the training loss.
  create_loss: Callable[[ml_collections.ConfigDict, np.ndarray, int], losses.LossFn]
  # Validation: (probabilities, labels, class names) -> {"auc", "accuracy", "nll", ...}.
  summarize: Callable[[np.ndarray, np.ndarray, Sequence[str]], dict[str, float]]
  relabel: Callable[[labels_lib.Label, str], labels_lib.Label]  # (label, config.loss.uncertain).
  label_is_vector: bool  # A record's label: float32 [K] findings, or a class index.

  def relabelled(self, records: Sequence[Record], policy: str) -> list[Record]:
    """`records` with their labels under the uncertainty `policy` (config.loss.uncertain
    for training; "ignore" for evaluation, where an uncertain label counts as missing)."""
    return [{**record, "label": self.relabel(record["label"], policy)} for record in records]

  def check_labels(self, records: Sequence[Record], class_names: Sequence[str]) -> None:
    """Raises DataError naming the first record whose label does not fit the task."""
    shape = (len(class_names),) if self.label_is_vector else ()
    for record in records:
      if np.shape(record["label"]) != shape:
        expected = (f"a vector of {len(class_names)} findings (config.data.class_names)"
                    if self.label_is_vector else "one class index (label vectors of findings "
                    "need config.task=multilabel)")
        raise errors.DataError(
            f"{record['path']}: label of shape {np.shape(record['label'])}; "
            f"config.task={self.name!r} expects {expected}")


SINGLE_LABEL = Task("single_label", jax.nn.softmax, argmax_accuracy, losses.create_loss,
                    _class_summary, _same_label, label_is_vector=False)
MULTILABEL = Task("multilabel", jax.nn.sigmoid, finding_accuracy, losses.create_multilabel_loss,
                  metrics.summarize_findings, labels_lib.apply_uncertainty,
                  label_is_vector=True)
TASKS = {task.name: task for task in (SINGLE_LABEL, MULTILABEL)}


def get(config: ml_collections.ConfigDict) -> Task:
  """The task of `config.task` (runs saved before it existed: single_label)."""
  name = config.get("task", SINGLE_LABEL.name)
  if name not in TASKS:
    raise errors.ConfigError(f"config.task={name!r}: expected {' or '.join(TASKS)}")
  return TASKS[name]
