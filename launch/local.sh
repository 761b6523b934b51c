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
(emojax.parallel.initialize_distributed reads them), its log in DIR/process_i.log and its pid in DIR/process_i.pid
(default DIR /tmp/emojax_local), and waits. When a process fails, the others get --grace=S seconds (default 150:
JAX's heartbeat timeout, EMOJAX_HEARTBEAT_TIMEOUT, default 100, fails them first) before they are killed; the
exit status is non-zero if any process failed. SIGTERM to one process checkpoints and stops all of them after
the same step. --dry-run prints the commands instead.
Example: launch/local.sh --num_processes=2 --devices_per_process=4 -- \
           --config=configs/generator.py:smoke --workdir=/tmp/run --config.mesh.num_devices=8
USAGE
}
n="" d="" port=12355 logdir=/tmp/emojax_local dry=0 grace=150
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_processes=*) n="${1#*=}" ;;
    --devices_per_process=*) d="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --logdir=*) logdir="${1#*=}" ;;
    --grace=*) grace="${1#*=}" ;;
    --dry-run) dry=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "launch/local.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$n" =~ ^[1-9][0-9]*$ && "$d" =~ ^[1-9][0-9]*$ && "$grace" =~ ^[0-9]+$ ]]; then
  echo "launch/local.sh: error: --num_processes and --devices_per_process must be positive integers, --grace a" \
       "number of seconds (see --help)" >&2
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
declare -A proc_of=()
for i in "${!cmds[@]}"; do
  bash -c "${cmds[$i]/ python / exec python }" &  # exec: the pid is the python process's
  proc_of[$!]=$i
  echo $! > "$logdir/process_$i.pid"
done
status=0 watchdog=""
while [[ ${#proc_of[@]} -gt 0 ]]; do
  rc=0 done_pid=""
  wait -n -p done_pid "${!proc_of[@]}" || rc=$?
  [[ -n $done_pid ]] || continue
  i=${proc_of[$done_pid]}
  unset "proc_of[$done_pid]"
  if [[ $rc != 0 ]]; then
    echo "launch/local.sh: process $i exited with status $rc; its log: $logdir/process_$i.log" >&2
    status=1
    if [[ -z $watchdog && ${#proc_of[@]} -gt 0 ]]; then
      (trap 'kill $nap 2>/dev/null; exit 0' TERM
       sleep "$grace" & nap=$!
       wait $nap
       echo "launch/local.sh: killing processes still running ${grace}s after the failure" >&2
       kill -9 "${!proc_of[@]}" 2>/dev/null) &
      watchdog=$!
    fi
  fi
done
[[ -z $watchdog ]] || kill "$watchdog" 2>/dev/null || true
exit $status
