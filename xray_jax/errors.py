"""Errors a user can fix: they are reported as one line, without a traceback."""


class XrayError(Exception):
  """Base class for problems with the user's input: config, data or workdir."""


class ConfigError(XrayError):
  """A config value is missing, of the wrong type or out of range."""


class DataError(XrayError):
  """A data directory, file or image cannot be used."""


class TrainingDivergedError(XrayError):
  """The loss or gradient norm became NaN or infinite."""


class CheckpointError(XrayError):
  """A checkpoint does not fit the state the config describes."""


class WorkdirBusyError(XrayError):
  """Another trainer holds the workdir."""


class WriteError(XrayError):
  """A file cannot be written: its filesystem is full, over quota or read-only."""


class Preempted(Exception):
  """Training stopped on a preemption notice after saving a checkpoint of `step`."""

  def __init__(self, step: int):
    super().__init__(f"preempted: checkpoint of step {step} saved; rerun to resume")
    self.step = step


class Interrupted(Preempted):
  """Training stopped on Ctrl-C after saving a checkpoint of `step`."""

  def __str__(self) -> str:
    return (f"interrupted (Ctrl-C): checkpoint of step {self.step} saved; run the same "
            "command again to resume")
