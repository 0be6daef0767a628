#!/usr/bin/env bash
# Trains xray_jax on a Cloud TPU VM (a single host or a pod slice): creates the TPU, copies
# this checkout to every worker and installs it, runs the same training command on all
# workers (jax.distributed finds its peers from the TPU metadata), streams the logs, then
# deletes the TPU. Every gcloud call is printed; --dry_run prints them without running.
#
#   launch/tpu_vm.sh --name=xray-v5e --zone=us-west4-a --accelerator=v5litepod-16 \
#       --config=configs/pneumonia.py --workdir=gs://BUCKET/runs/r1 [-- EXTRA TRAINER FLAGS]
#
# Flags:
#   --name=NAME --zone=ZONE --accelerator=TYPE   required
#   --project=ID          gcloud project (default: gcloud's configured one)
#   --version=RUNTIME     TPU software version (default tpu-ubuntu2204-base)
#   --mode=on-demand|spot|queued   how the TPU is obtained (default on-demand); queued asks
#                         for a queued resource and waits until it is ACTIVE
#   --config=FILE --workdir=DIR   the trainer's flags (WORKDIR: a gs:// path on pods)
#   --eval_watch          also run `xray_jax.evaluate --watch` on worker 0, on its CPU
#   --max_restarts=N      when training stops for a preemption (exit 75, or the TPU was
#                         preempted), recreate the TPU and resume, up to N times (default 3)
#   --keep                leave the TPU running at the end (default: delete it)
#   --dry_run             print the gcloud commands only
# Logs: WORKDIR_LOGS (default ./logs)/NAME.log holds the streamed output of all workers.
set -uo pipefail

name='' zone='' accelerator='' project='' config='' workdir=''
version=tpu-ubuntu2204-base mode=on-demand eval_watch=0 max_restarts=3 keep=0 dry_run=0
extra=()
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --mode=*) mode=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --eval_watch) eval_watch=1 ;;
    --max_restarts=*) max_restarts=${1#*=} ;;
    --keep) keep=1 ;;
    --dry_run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown flag $1 (see the top of this script)" ;;
  esac
  shift
done
for flag in name zone accelerator config workdir; do
  [[ -n ${!flag} ]] || die "--$flag is required"
done
[[ $mode =~ ^(on-demand|spot|queued)$ ]] || die "--mode=$mode: expected on-demand, spot or queued"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max_restarts=$max_restarts: expected a number"

log_dir=${WORKDIR_LOGS:-logs}
mkdir -p "$log_dir" || die "cannot create $log_dir"
log=$log_dir/$name.log
where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")
created=0

gcloud_call() {  # gcloud_call STEP ARGS...: prints, runs and checks one gcloud command.
  local step=$1
  shift
  echo "+ gcloud $*"
  [[ $dry_run == 1 ]] && return 0
  gcloud "$@"
  local status=$?
  if [[ $status != 0 ]]; then
    echo "tpu_vm.sh: step '$step' failed (exit $status): gcloud $*" >&2
    cleanup
    exit "$status"
  fi
}

cleanup() {
  if [[ $created == 1 && $keep == 0 ]]; then
    created=0
    delete_tpu
  elif [[ $created == 1 ]]; then
    echo "tpu_vm.sh: --keep: $name is still running; delete it with:" \
      "gcloud compute tpus tpu-vm delete $name ${where[*]} --quiet"
  fi
}

delete_tpu() {
  if [[ $mode == queued ]]; then
    gcloud_call delete compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    gcloud_call delete compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

create_tpu() {
  created=1
  if [[ $mode == queued ]]; then
    gcloud_call create compute tpus queued-resources create "$name" --node-id="$name" \
      "${where[@]}" --accelerator-type="$accelerator" --runtime-version="$version"
    [[ $dry_run == 1 ]] && return 0
    local state=
    until [[ $state == ACTIVE ]]; do
      sleep "${TPU_POLL_SECONDS:-30}"
      state=$(gcloud compute tpus queued-resources describe "$name" "${where[@]}" \
        --format='value(state.state)') || { echo "tpu_vm.sh: step 'wait' failed" >&2; cleanup; exit 1; }
      echo "tpu_vm.sh: queued resource $name is ${state:-unknown}"
      [[ $state =~ ^(FAILED|SUSPENDED)$ ]] && { echo "tpu_vm.sh: step 'wait' failed: $state" >&2; cleanup; exit 1; }
    done
  else
    local spot=()
    [[ $mode == spot ]] && spot=(--spot)
    gcloud_call create compute tpus tpu-vm create "$name" "${where[@]}" \
      --accelerator-type="$accelerator" --version="$version" "${spot[@]}"
  fi
}

on_all_workers() {  # on_all_workers STEP COMMAND
  gcloud_call "$1" compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$2"
}

install_code() {
  local archive
  archive=$(mktemp -d)/xray_jax.tar.gz
  echo "+ git archive --format=tar.gz -o $archive HEAD"
  [[ $dry_run == 1 ]] || git archive --format=tar.gz -o "$archive" HEAD \
    || die "git archive failed: run this script from the xray_jax checkout"
  gcloud_call copy compute tpus tpu-vm scp "$archive" "$name:xray_jax.tar.gz" "${where[@]}" \
    --worker=all
  on_all_workers install "rm -rf xray_jax && mkdir xray_jax && tar xzf xray_jax.tar.gz -C xray_jax && python3 -m pip install -q -e ./xray_jax 'jax[tpu]'"
}

trap 'echo "tpu_vm.sh: interrupted" >&2; cleanup; exit 130' INT TERM
printf -v trainer_flags ' %q' --config="$config" --workdir="$workdir" "${extra[@]}"
for ((attempt = 0; ; attempt++)); do
  create_tpu
  install_code
  if [[ $eval_watch == 1 ]]; then
    gcloud_call evaluator compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=0 \
      --command="cd xray_jax && JAX_PLATFORMS=cpu nohup python3 -m xray_jax.evaluate --workdir=$(printf %q "$workdir") --watch > evaluate.log 2>&1 &"
  fi
  echo "+ gcloud compute tpus tpu-vm ssh $name ${where[*]} --worker=all --command=... (train; log: $log)"
  status=0
  if [[ $dry_run == 0 ]]; then
    gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
      --command="cd xray_jax && python3 -m xray_jax.main --auto_distributed$trainer_flags" \
      2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
  fi
  [[ $status == 0 ]] && break
  state=
  [[ $dry_run == 0 ]] && state=$(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null)
  if [[ ($status == 75 || $state == PREEMPTED) && $attempt -lt $max_restarts ]]; then
    echo "tpu_vm.sh: preempted (exit $status, TPU ${state:-state unknown}); recreating $name to resume"
    created=0
    delete_tpu
    continue
  fi
  echo "tpu_vm.sh: step 'train' failed (exit $status; TPU ${state:-state unknown}); see $log" >&2
  cleanup
  exit "$status"
done
echo "tpu_vm.sh: training finished; log: $log"
cleanup
