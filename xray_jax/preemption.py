"""Preemption notices: SIGTERM (a cluster's eviction or time-limit warning) makes every
process of the job stop after the same step, save a checkpoint and exit for a resubmit."""

import signal
import types

import jax
from absl import logging
from jax.experimental import multihost_utils

# Exit status of a trainer that saved a checkpoint on a preemption notice and wants to be
# restarted: EX_TEMPFAIL of sysexits.h. The launchers in launch/ resubmit on it.
RESUBMIT_EXIT_CODE = 75


class PreemptionWatcher:
  """Tells the training loop when to stop, at a step all processes agree on.

  One process: a SIGTERM handler sets a flag. Several processes: JAX's preemption service
  (started by `jax.distributed.initialize`) catches SIGTERM on any process and picks the
  next step that every process reaches; all of them then see `should_stop` at that step.
  """

  def __init__(self):
    self._noticed = False
    self._previous_handler = None
    if jax.process_count() == 1:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    logging.warning("received signal %d: stopping after this step with a checkpoint", signum)
    self._noticed = True

  def should_stop(self, step: int) -> bool:
    """Call once after every train step, on every process."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._noticed

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None
