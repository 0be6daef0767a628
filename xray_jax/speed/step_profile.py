"""Where a compiled step's time goes: a `jax.profiler` trace of a few calls, its device time
summed per HLO instruction and per kind of instruction: its opcode (convolution, dot ...),
the target of a custom call (a cuDNN convolution ...), or for a fusion the name XLA gave it
after the operations it fuses (transpose_copy_fusion ...).

On the CPU, XLA runs convolutions asynchronously on its Eigen thread pool, and the trace
times only their launch: there the figures show what the rest of the step costs. The trace
stays on disk for TensorBoard's or XProf's profile viewer, or Perfetto.
"""

import dataclasses
import pathlib
import re
from collections.abc import Callable
from typing import Any

import jax

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+) = (?:\([^=]*?\)|\S+) (?P<opcode>[\w-]+)\(.*$",
    re.MULTILINE)
_CUSTOM_CALL_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_NUMBERED = re.compile(r"\.\d+$")
_MODULE = re.compile(r"^HloModule ([^\s,]+)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class OpTime:
  """One HLO instruction's time per call of the step, on the average device."""

  name: str  # The instruction, e.g. "convolution.12".
  kind: str  # Its opcode, "custom-call:TARGET" or "fusion:NAME" (the name less its number).
  seconds: float


def hlo_kinds(hlo_text: str) -> tuple[str, dict[str, str]]:
  """The module's name and the kind of each instruction of compiled HLO text."""
  module = _MODULE.search(hlo_text)
  if module is None:
    raise ValueError("not HLO module text: it has no 'HloModule' line")
  kinds = {}
  for match in _INSTRUCTION.finditer(hlo_text):
    kind = match["opcode"]
    if kind == "custom-call":
      target = _CUSTOM_CALL_TARGET.search(match[0])
      kind = f"custom-call:{target[1]}" if target else kind
    elif kind == "fusion":
      kind = "fusion:" + _NUMBERED.sub("", match["name"])
    kinds[match["name"]] = kind
  return module[1], kinds


def trace(run: Callable[[], Any], calls: int, log_dir: str | pathlib.Path) -> pathlib.Path:
  """Calls `run` `calls` times (waiting for each) under the profiler; returns the trace file
  (an XSpace `.xplane.pb`) that this writes under `log_dir`."""
  log_dir = pathlib.Path(log_dir)
  before = set(log_dir.rglob("*.xplane.pb"))
  with jax.profiler.trace(str(log_dir)):
    for _ in range(calls):
      jax.block_until_ready(run())
  written = sorted(set(log_dir.rglob("*.xplane.pb")) - before)
  if not written:
    raise RuntimeError(f"the profiler wrote no .xplane.pb file under {log_dir}")
  return written[-1]


def instruction_seconds(xplane: pathlib.Path, module: str) -> dict[str, float]:
  """Seconds per HLO instruction of `module` in a trace, on the average device: its events'
  durations summed, over the number of devices that ran the module. The events are the
  device kernels where the trace has device planes (accelerators), else the executor
  threads' (the CPU)."""
  planes = jax.profiler.ProfileData.from_file(str(xplane)).planes
  events = {True: [], False: []}  # On a device plane or not: [(device, instruction, s)].
  for plane in planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_module") == module and "hlo_op" in stats:
          events[plane.name.startswith("/device:")].append(
              (stats.get("device_ordinal", plane.name), stats["hlo_op"], event.duration_ns / 1e9))
  chosen = events[True] or events[False]
  totals: dict[str, float] = {}
  for _, name, seconds in chosen:
    totals[name] = totals.get(name, 0.0) + seconds
  devices = len({device for device, _, _ in chosen})
  return {name: total / devices for name, total in totals.items()}


def profile(run: Callable[[], Any], hlo_text: str, calls: int,
            log_dir: str | pathlib.Path) -> list[OpTime]:
  """Traces `calls` calls of `run`, which executes the compiled module of `hlo_text`, and
  returns its instructions' seconds per call on the average device, the costliest first."""
  module, kinds = hlo_kinds(hlo_text)
  seconds = instruction_seconds(trace(run, calls, log_dir), module)
  if not seconds:
    raise RuntimeError(f"the trace under {log_dir} holds no events of HLO module {module}")
  ops = [OpTime(name, kinds.get(name, "other"), total / calls)
         for name, total in seconds.items()]
  return sorted(ops, key=lambda op: op.seconds, reverse=True)


def seconds_by_kind(ops: list[OpTime], top: int | None = None) -> dict[str, float]:
  """Seconds per call summed per kind of instruction, the costliest first; with `top`, the
  `top` costliest kinds and the rest summed as "others"."""
  totals: dict[str, float] = {}
  for op in ops:
    totals[op.kind] = totals.get(op.kind, 0.0) + op.seconds
  ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
  if top is None or len(ranked) <= top:
    return dict(ranked)
  return {**dict(ranked[:top]), "others": sum(seconds for _, seconds in ranked[top:])}
