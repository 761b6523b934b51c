#!/usr/bin/env bash
# Several emojax processes on this machine, talking through JAX's CPU collectives (Gloo): what a pod does,
# on localhost. Each process gets D simulated CPU devices; process 0 hosts the coordinator.
set -euo pipefail
usage() {
  cat <<'USAGE'
launch/local.sh --num_processes=N --devices_per_process=D [--port=P] [--logdir=DIR] [--dry-run] -- <emojax.train args>

Starts N `python -m emojax.train` processes here, process i with
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=D
  EMOJAX_COORDINATOR=localhost:P EMOJAX_NUM_PROCESSES=N EMOJAX_PROCESS_ID=i
(emojax.parallel.initialize_distributed reads them), its log in DIR/process_i.log (default /tmp/emojax_local),
and waits; exits non-zero if any process fails. --dry-run prints the commands instead.
Example: launch/local.sh --num_processes=2 --devices_per_process=4 -- \
           --config=configs/generator.py:smoke --workdir=/tmp/run --config.mesh.num_devices=8
USAGE
}
n="" d="" port=12355 logdir=/tmp/emojax_local dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_processes=*) n="${1#*=}" ;;
    --devices_per_process=*) d="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --logdir=*) logdir="${1#*=}" ;;
    --dry-run) dry=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "launch/local.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$n" =~ ^[1-9][0-9]*$ && "$d" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch/local.sh: error: --num_processes and --devices_per_process must be positive integers (see --help)" >&2
  exit 2
fi
cmds=()
for ((i = 0; i < n; i++)); do
  cmds+=("JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$d EMOJAX_COORDINATOR=localhost:$port EMOJAX_NUM_PROCESSES=$n EMOJAX_PROCESS_ID=$i python -m emojax.train $(printf '%q ' "$@")> $logdir/process_$i.log 2>&1")
done
if [[ $dry == 1 ]]; then
  printf '%s\n' "${cmds[@]}"
  exit 0
fi
mkdir -p "$logdir"
pids=()
for c in "${cmds[@]}"; do
  bash -c "$c" &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "launch/local.sh: process $i failed; its log: $logdir/process_$i.log" >&2
    status=1
  fi
done
exit $status
