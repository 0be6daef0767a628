"""Stop notices: SIGTERM (a cluster's eviction or time-limit warning) and Ctrl-C (SIGINT)
make every process of the job stop after the same step and save a checkpoint; SIGTERM then
exits for a resubmit, Ctrl-C as a shell expects of an interrupted program. A second Ctrl-C
ends the process at once, without a checkpoint of its step."""

import os
import signal
import types

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from xray_jax import interrupts

# Exit status of a trainer that saved a checkpoint on a preemption notice and wants to be
# restarted: EX_TEMPFAIL of sysexits.h. The launchers in launch/ resubmit on it.
RESUBMIT_EXIT_CODE = 75


class PreemptionWatcher:
  """Tells the training loop when to stop, at a step all processes agree on.

  One process: SIGTERM and SIGINT handlers set a flag. Several processes: JAX's preemption
  service (started by `jax.distributed.initialize`) catches SIGTERM on any process and picks
  the next step that every process reaches; all of them then see `should_stop` at that
  step. The service knows only SIGTERM, so a process that gets SIGINT sends itself SIGTERM.
  """

  def __init__(self):
    self._noticed = self._interrupted = False
    self._previous_handler = None
    if jax.process_count() == 1:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)
    self._ctrl_c = interrupts.CtrlC(self._on_interrupt)

  def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    logging.warning("received signal %d: stopping after this step with a checkpoint", signum)
    self._noticed = True

  def _on_interrupt(self, presses: int) -> None:
    if presses > 1:
      interrupts.exit_now("interrupted again (Ctrl-C): stopped at once, without a checkpoint "
                          "of this step; run the same command again to resume from the last "
                          "complete one")
    logging.warning("Ctrl-C: stopping after this step with a checkpoint (press Ctrl-C again "
                    "to stop at once, without one)")
    self._interrupted = self._noticed = True
    if jax.process_count() > 1:
      os.kill(os.getpid(), signal.SIGTERM)  # To JAX's preemption service.

  def should_stop(self, step: int) -> bool:
    """Call once after every train step, on every process."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._noticed

  def interrupted(self) -> bool:
    """Whether a Ctrl-C, on any process, is among the notices; call on every process at the
    step where they stop."""
    if jax.process_count() == 1:
      return self._interrupted
    return bool(multihost_utils.process_allgather(np.array(self._interrupted)).any())

  def close(self) -> None:
    self._ctrl_c.close()
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None
