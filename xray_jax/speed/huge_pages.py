"""Restarts a binary with glibc's malloc on transparent huge pages (opt-in: `--huge_pages`).

XLA:CPU allocates each execution's temporary buffer and its large outputs with malloc. glibc
serves allocations that large with a fresh mmap and unmaps them when they are freed, so every
train step faults its whole working set in again, 4 KiB at a time. With the tunable
`glibc.malloc.hugetlb=1` (glibc 2.35 and later), malloc asks for transparent huge pages and
the faults mostly go away (docs/speed.md has the measurements).

glibc reads tunables only when a process starts, so `restart_with_huge_pages` re-executes the
same command, in the same process, with the tunable added to GLIBC_TUNABLES. Setting that
variable before starting the binary does the same without a re-exec. It does nothing where it
cannot help: another C library, an older glibc, transparent huge pages set to `never` (or
`always`, which needs no advice), or GLIBC_TUNABLES already naming the tunable.
"""

import os
import re
import sys

from absl import logging

TUNABLE = "glibc.malloc.hugetlb"
FIRST_GLIBC = (2, 35)  # The first glibc with the tunable.
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc; None under another C library."""
  try:
    text = os.confstr("CS_GNU_LIBC_VERSION") or ""
  except (ValueError, OSError):
    return None
  match = re.fullmatch(r"glibc (\d+)\.(\d+).*", text)
  return (int(match[1]), int(match[2])) if match else None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode (always, madvise, never); None if unknown."""
  try:
    with open(path) as f:
      match = re.search(r"\[(\w+)\]", f.read())
  except OSError:
    return None
  return match and match[1]


def huge_pages_environ(environ: dict[str, str], glibc: tuple[int, int] | None,
                       mode: str | None) -> dict[str, str] | None:
  """The environment to restart with, or None when a restart would not help."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if glibc is None or glibc < FIRST_GLIBC or mode != "madvise" or TUNABLE in tunables:
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}


def restart_with_huge_pages() -> None:
  """Re-executes this process's command with `TUNABLE` set, when `huge_pages_environ` says
  that helps; call it before the process starts threads or JAX."""
  environ = huge_pages_environ(dict(os.environ), glibc_version(), thp_mode())
  if environ is None or not sys.executable:
    return
  logging.info("Restarting with GLIBC_TUNABLES=%s", environ["GLIBC_TUNABLES"])
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environ)
