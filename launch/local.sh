#!/usr/bin/env bash
# Runs N training processes on this machine, joined by jax.distributed over 127.0.0.1: the
# multi-host code path without a cluster (CPU devices, or one process per GPU).
#
#   launch/local.sh N --config=configs/pneumonia.py:runlocal --workdir=/tmp/xray/r1 [FLAGS...]
#
# Environment: XRAY_PYTHON (default python3), XRAY_PORT (coordinator port, default a free
# one), XRAY_DEVICE_PER_PROCESS=1 to give process i only local device i (GPU boxes), and
# XLA_FLAGS (e.g. --xla_force_host_platform_device_count=2 for 2 CPU devices per process).
# Logs: WORKDIR/logs/local_process_I.log (appended to). Exit status: 0 when training finished, 75 when it
# stopped on SIGTERM after a checkpoint (run the same command again to resume), else the
# first failure's status. Ctrl-C or SIGTERM is passed on to every process.
set -uo pipefail

die() { echo "local.sh: $*" >&2; exit 2; }
[[ $# -ge 2 && $1 =~ ^[1-9][0-9]*$ ]] || die "usage: launch/local.sh N --config=... --workdir=... [FLAGS...]"
num_processes=$1
shift
workdir=
for arg in "$@"; do
  [[ $arg == --workdir=* ]] && workdir=${arg#--workdir=}
done
[[ -n $workdir ]] || die "give --workdir=DIR (logs go to DIR/logs)"
python=${XRAY_PYTHON:-python3}
port=${XRAY_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=$workdir/logs
mkdir -p "$log_dir" || die "cannot create $log_dir"

pids=()
for ((i = 0; i < num_processes; i++)); do
  device_flag=()
  [[ ${XRAY_DEVICE_PER_PROCESS:-0} == 1 ]] && device_flag=(--local_device_ids="$i")
  "$python" -m xray_jax.main "$@" --coordinator_address="127.0.0.1:$port" \
    --num_processes="$num_processes" --process_id="$i" "${device_flag[@]}" \
    >>"$log_dir/local_process_$i.log" 2>&1 &
  pids+=($!)
done
echo "local.sh: $num_processes processes (pids ${pids[*]}), coordinator 127.0.0.1:$port, logs in $log_dir"
trap 'echo "local.sh: passing SIGTERM on" >&2; kill -TERM "${pids[@]}" 2>/dev/null' TERM INT

status=0
for i in "${!pids[@]}"; do
  while true; do
    wait "${pids[$i]}"
    rc=$?
    kill -0 "${pids[$i]}" 2>/dev/null || break  # Else a trapped signal interrupted the wait.
  done
  if [[ $rc != 0 ]]; then
    echo "local.sh: process $i exited with status $rc (log: $log_dir/local_process_$i.log)" >&2
    [[ $status == 0 || $status == 75 ]] && status=$rc
  fi
done
[[ $status == 75 ]] && echo "local.sh: preempted; the checkpoint is saved: run the same command again to resume" >&2
exit "$status"
