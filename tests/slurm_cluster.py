"""A real single-node SLURM cluster (munged, slurmctld, slurmd) in a temporary directory,
for the launcher tests. Needs root and Debian's `slurm-wlm` and `munge` (.ci/run installs
them; the `cluster` marker skips its tests without them); it raises when a daemon that is
installed does not come up."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

_CONF = """\
ClusterName=xraytest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge-socket/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class SlurmCluster:
  """Starts the daemons in a new folder under /tmp (munged wants every folder above its
  socket open to all, which pytest's temporary folders are not); `stop` removes it."""

  def __init__(self):
    root = self.root = pathlib.Path(tempfile.mkdtemp(prefix="xray-slurm-"))
    for sub in ("state", "spool", "munge-key", "munge-socket"):
      (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "munge-key").chmod(0o700)
    (root / "munge-socket").chmod(0o755)
    key = root / "munge-key" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    self.conf = root / "slurm.conf"
    self.conf.write_text(_CONF.format(host=socket.gethostname().split(".")[0], root=root,
                                      ctld_port=_free_port(), d_port=_free_port()))
    self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
    self._pid_files = []
    self._start(["/usr/sbin/munged", f"--key-file={key}",
                 f"--socket={root}/munge-socket/munge.socket",
                 f"--pid-file={root}/munge-key/munged.pid",
                 f"--log-file={root}/munge-key/munged.log",
                 f"--seed-file={root}/munge-key/munged.seed"], root / "munge-key/munged.pid")
    self._start(["slurmctld", "-f", str(self.conf)], root / "slurmctld.pid")
    self._start(["slurmd", "-f", str(self.conf)], root / "slurmd.pid")
    self._wait_until_idle()

  def _start(self, command: list[str], pid_file: pathlib.Path) -> None:
    result = subprocess.run(command, env=self.env, capture_output=True, text=True)
    if result.returncode != 0:
      message = (f"{command[0]} did not start ({result.returncode}): "
                 f"{result.stdout}{result.stderr}{self.logs()}")
      self.stop()
      raise RuntimeError(message)
    self._pid_files.append(pid_file)

  def _wait_until_idle(self, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      state = self.run("sinfo", "--noheader", "--format=%T", check=False).stdout.strip()
      if state == "idle":
        return
      time.sleep(0.5)
    message = f"the SLURM node is not idle after {timeout} s: {self.logs()}"
    self.stop()
    raise RuntimeError(message)

  def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=self.env, capture_output=True, text=True)
    if check and result.returncode != 0:
      raise RuntimeError(f"{' '.join(command)}: {result.stderr}")
    return result

  def job_state(self, job_id: str) -> str:
    """PENDING, RUNNING, COMPLETED, FAILED, ... of a job the controller remembers."""
    info = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
    return info.split("JobState=")[1].split()[0]

  def logs(self) -> str:
    return "".join(f"\n--- {p.name}:\n{p.read_text()[-2000:]}"
                   for p in (self.root / "slurmctld.log", self.root / "slurmd.log")
                   if p.is_file())

  def stop(self) -> None:
    """Stops the daemons (slurmd first) by the PIDs in their PID files."""
    for pid_file in reversed(self._pid_files):
      if pid_file.is_file():
        pid = int(pid_file.read_text().split()[0])
        try:
          os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
          continue
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
          try:
            os.kill(pid, 0)
          except ProcessLookupError:
            break
          time.sleep(0.1)
    self._pid_files = []
    shutil.rmtree(self.root, ignore_errors=True)
