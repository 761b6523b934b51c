#!/usr/bin/env bash
# A TPU VM slice: create it, copy the project, install it and run the same emojax.train command on every worker
# (jax.distributed.initialize() finds the slice's hosts itself), tail the logs, delete it.
set -euo pipefail
usage() {
  cat <<'USAGE'
launch/tpu_vm.sh ACTION --name=NAME --zone=ZONE [--accelerator=v5p-16] [--version=tpu-ubuntu2204-base]
                 [--dry-run] [-- <emojax.train args>]

ACTION: create | copy | install | run | logs | delete
  create   gcloud compute tpus tpu-vm create NAME (accelerator type, runtime version)
  copy     this checkout to ~/emojax on every worker (gcloud ... scp --recurse --worker=all)
  install  pip install -e ~/emojax on every worker
  run      python -m emojax.train <args> on every worker at once, in the background, log ~/emojax.log
           (give a gs:// --workdir so every worker writes the same checkpoints)
  logs     tail -f ~/emojax.log of worker 0
  delete   gcloud compute tpus tpu-vm delete NAME
--dry-run prints the gcloud command instead of running it.
USAGE
}
action="${1:-}"
[[ "$action" == -h || "$action" == --help || -z "$action" ]] && { usage; exit 0; }
shift
name="" zone="" accel="v5p-16" version="tpu-ubuntu2204-base" dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accel="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) echo "launch/tpu_vm.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "launch/tpu_vm.sh: error: --name and --zone are required (see --help)" >&2
  exit 2
fi
tpu="gcloud compute tpus tpu-vm"
ssh="$tpu ssh $name --zone=$zone --worker=all --command"
case "$action" in
  create) cmd="$tpu create $name --zone=$zone --accelerator-type=$accel --version=$version" ;;
  copy) cmd="$tpu scp --recurse $(cd "$(dirname "$0")/.." && pwd) $name:~/emojax --zone=$zone --worker=all" ;;
  install) cmd="$ssh='pip install -e ~/emojax'" ;;
  run)
    if [[ $# == 0 ]]; then
      echo "launch/tpu_vm.sh: error: run needs the emojax.train arguments after -- (see --help)" >&2
      exit 2
    fi
    cmd="$ssh='cd ~/emojax && nohup python -m emojax.train $(printf '%q ' "$@")> ~/emojax.log 2>&1 &'" ;;
  logs) cmd="$tpu ssh $name --zone=$zone --worker=0 --command='tail -f ~/emojax.log'" ;;
  delete) cmd="$tpu delete $name --zone=$zone --quiet" ;;
  *) echo "launch/tpu_vm.sh: error: unknown action $action (see --help)" >&2; exit 2 ;;
esac
if [[ $dry == 1 ]]; then
  echo "$cmd"
  exit 0
fi
eval "$cmd"
