"""SimCLR's model side: a classifier cut at the feature map it sows (`common.FEATURES`), a
projection MLP on that map's global average, and the NT-Xent loss.

The encoder's variables are the classifier's own tree less what comes after the features
(the CNN's dense layers, every model's head), plus a `projector` entry. Fine-tuning loads
arrays by path (`finetune.load_source`), so a pretraining run's backbone arrives exactly,
the head starts fresh and the projector is left behind.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util
from jax.extend import core

from xray_jax import models
from xray_jax.models import common

PROJECTOR = "projector"  # The projection MLP's entry in the encoder's params and batch_stats.
Path = tuple[str, ...]  # A flattened variable path, collection first.


def is_pretraining(config: ml_collections.ConfigDict) -> bool:
  """Whether a run's config is a pretraining run's (it has a `pretrain` section)."""
  return "pretrain" in config


class Projector(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: the space where NT-Xent compares views."""

  hidden: int
  out: int
  batch_norm_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Dense(self.hidden, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum)(x)
    return nn.Dense(self.out)(nn.relu(x))


def pooled_features(model: nn.Module, variables: dict[str, Any], images: jax.Array,
                    train: bool, rngs: dict[str, jax.Array] | None = None
                    ) -> tuple[jax.Array, dict[str, Any]]:
  """The global average of the feature map that `model` sows, [N, C] in float32, and the
  updated BatchNorm statistics (training) or {}."""
  mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
  _, state = model.apply(variables, images, train=train, rngs=rngs, mutable=mutable)
  features = state["intermediates"][common.FEATURES][0]
  return jnp.mean(features.astype(jnp.float32), axis=(1, 2)), state.get("batch_stats", {})


def _read_inputs(jaxpr: core.Jaxpr) -> list[bool]:
  """Whether each input of `jaxpr` reaches one of its outputs."""
  live = {v for v in jaxpr.outvars if isinstance(v, core.Var)}
  for eqn in reversed(jaxpr.eqns):
    if any(v in live for v in eqn.outvars):
      live.update(v for v in eqn.invars if isinstance(v, core.Var))
  return [v in live for v in jaxpr.invars]


def feature_paths(model: nn.Module, variables: dict[str, Any],
                  input_shape: tuple[int, ...]) -> set[Path]:
  """The variables (params, batch_stats) that the model's feature map reads in inference:
  those an output of its traced computation depends on."""
  flat = traverse_util.flatten_dict(variables)
  keys = list(flat)

  def features(leaves):
    variables = traverse_util.unflatten_dict(dict(zip(keys, leaves, strict=True)))
    return pooled_features(model, variables, jnp.zeros((1, *input_shape)), train=False)[0]

  jaxpr = jax.make_jaxpr(features)([flat[k] for k in keys]).jaxpr
  return {k for k, read in zip(keys, _read_inputs(jaxpr), strict=True) if read}


def _split(variables: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(the classifier's variables, the projector's) of encoder variables."""
  return ({c: {k: v for k, v in tree.items() if k != PROJECTOR} for c, tree in variables.items()},
          {c: tree[PROJECTOR] for c, tree in variables.items()})


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
  """A classifier cut at its sown feature map, then `projector`. Its `init` and `apply`
  take and give {"params": {...backbone, "projector": ...}, "batch_stats": {...}}."""

  model: nn.Module
  projector: Projector
  # The classifier's variables that the features do not read, and their shapes: fed as
  # zeros, their computation is dead code that XLA drops.
  rest: dict[Path, jax.ShapeDtypeStruct]

  @classmethod
  def create(cls, model_config: ml_collections.ConfigDict,
             pretrain_config: ml_collections.ConfigDict,
             input_shape: tuple[int, ...]) -> "Encoder":
    """The registered model of `model_config` and the projection of `pretrain_config`."""
    model = models.create_model(model_config, 2)  # Any class count: the head is cut off.
    shape = (1, *input_shape)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
    abstract = {c: abstract[c] for c in ("params", "batch_stats") if c in abstract}
    backbone = feature_paths(model, abstract, input_shape)
    rest = {k: v for k, v in traverse_util.flatten_dict(abstract).items() if k not in backbone}
    width = jax.eval_shape(lambda v: pooled_features(model, v, jnp.zeros(shape), False)[0],
                           abstract).shape[-1]
    projector = Projector(pretrain_config.projection_hidden or width,
                          pretrain_config.projection_dim,
                          model_config.get("batch_norm_momentum", 0.9))
    return cls(model, projector, rest)

  def _classifier_variables(self, backbone: dict[str, Any]) -> dict[str, Any]:
    flat = traverse_util.flatten_dict(backbone)
    flat.update({k: jnp.zeros(s.shape, s.dtype) for k, s in self.rest.items()})
    return traverse_util.unflatten_dict(flat)

  def _backbone_only(self, variables: dict[str, Any]) -> dict[str, Any]:
    flat = traverse_util.flatten_dict(variables)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if k not in self.rest})

  def init(self, rng: jax.Array, images: jax.Array, train: bool = False) -> dict[str, Any]:
    """Fresh encoder variables (the signature of a Flax module's `init`)."""
    model_rng, projector_rng = jax.random.split(rng)
    variables = self.model.init(model_rng, images, train=train)
    variables = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
    features = pooled_features(self.model, variables, images, train=False)[0]
    projector = self.projector.init(projector_rng, features, train=train)
    backbone = self._backbone_only(variables)
    return {c: {**backbone.get(c, {}), PROJECTOR: projector[c]} for c in projector}

  def apply(self, variables: dict[str, Any], images: jax.Array,
            rngs: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, Any]]:
    """Projections [N, projection_dim] of `images` in training mode (batch statistics),
    and the updated `batch_stats`."""
    classifier, projector = _split(variables)
    features, stats = pooled_features(self.model, self._classifier_variables(classifier),
                                      images, train=True, rngs=rngs)
    projections, updates = self.projector.apply(projector, features, train=True,
                                                mutable=["batch_stats"])
    backbone_stats = self._backbone_only({"batch_stats": stats}).get("batch_stats", {})
    return projections, {**backbone_stats, PROJECTOR: updates["batch_stats"]}


def nt_xent(projections: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """SimCLR's loss over 2N projections whose rows 2k and 2k+1 are two views of one image:
  the mean cross-entropy of finding each row's partner among the 2N - 1 others by cosine
  similarity / `temperature`; and how often the partner is the most similar (top-1)."""
  z = projections.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  logits = z @ z.T / temperature
  rows = jnp.arange(z.shape[0])
  logits = jnp.where(rows[:, None] == rows[None, :], -jnp.inf, logits)
  partners = rows ^ 1
  loss = jax.nn.logsumexp(logits, axis=1) - logits[rows, partners]
  return jnp.mean(loss), jnp.mean(jnp.argmax(logits, axis=1) == partners)
