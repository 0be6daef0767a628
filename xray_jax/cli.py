"""Command-line handling shared by the binaries: a mistyped flag, config file or config
field is reported in one line, with a suggestion where one is known, not a traceback, and so
is Ctrl-C; and the process settings every binary makes before JAX starts."""

import contextlib
import sys
from collections.abc import Iterator

from absl import flags

from xray_jax import interrupts, logs
from xray_jax.speed import xla_flags


def _one_line(text: str) -> str:
  return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _unknown_field(error: KeyError | AttributeError, argv: list[str]) -> str:
  """Names the --config.FIELD override whose field does not exist."""
  cause = error.args[0] if error.args and isinstance(error.args[0], KeyError) else error
  detail = str(cause.args[0]) if cause.args else str(cause)  # "'name'\nDid you mean ...?"
  name = detail.split("'")[1] if detail.startswith("'") else ""
  overrides = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
  named = [o for o in overrides if name in o.split(".")] or overrides
  return f"{', '.join(named)}: no config field {_one_line(detail)}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, for `app.run(main, flags_parser=parse_flags)`; a failure exits
  with status 2 and one line."""
  try:
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS.config is not None:
      flags.FLAGS.config.keys()  # A config file that failed to load raises only when used.
    return remaining
  except flags.Error as e:
    message = str(e)
  except (KeyError, AttributeError) as e:  # ml_collections: a field that does not exist.
    message = _unknown_field(e, argv)
  except OSError as e:  # ml_collections: the config file cannot be loaded.
    message = str(e)
  print(f"error: {_one_line(message)} (see --help)", file=sys.stderr)
  sys.exit(2)


def set_up_process() -> None:
  """What every binary's `main()` does first, before JAX's first computation: the XLA:CPU
  defaults of `xla_flags`, quieter library logs and no noise after a failed save."""
  xla_flags.set_defaults()
  logs.quiet_library_logs()
  logs.quiet_closed_loop_results()


@contextlib.contextmanager
def exit_on_interrupt(consequence: str) -> Iterator[None]:
  """Ctrl-C in the block (or the decorated function) ends the binary at once with one line,
  "interrupted: `consequence`", and status 130 (`interrupts.exit_now`)."""
  with interrupts.CtrlC(lambda presses: interrupts.exit_now(f"interrupted: {consequence}")):
    yield
