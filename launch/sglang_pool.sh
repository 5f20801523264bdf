#!/usr/bin/env bash
# Starts a pool of mainline SGLang servers (python -m sglang.launch_server) on the GPU nodes of
# a SLURM allocation, one server per --tp GPUs, and writes their URLs (one per line) to a file
# that SGLangConfig.urls / the learner's rollout config reads. The servers live as long as
# this script: it waits on them, and stops them all when it exits or is interrupted.
#
# Example (inside `salloc -N 2 --gpus-per-node=8` or an sbatch script; the checkpoint and the
# export dir must be on a filesystem every node reads):
#   bash launch/sglang_pool.sh --model-path /shared/ckpt/qwen3-8b --tp 2 \
#       --urls-file /shared/run1/sglang_urls.txt -- --mem-fraction-static 0.8
# Print the commands without running anything:
#   bash launch/sglang_pool.sh --model-path /shared/ckpt/qwen3-8b --tp 2 --dry-run
#
# Options:
#   --model-path PATH     HF checkpoint to serve (required)
#   --tp N                GPUs per server (tensor parallel size), default 1
#   --gpus-per-node N     default: $SLURM_GPUS_ON_NODE, else 8
#   --base-port P         first port on every node, default 30000 (server k uses P + k)
#   --nodes "a b"         hosts to use, default: the allocation's ($SLURM_JOB_NODELIST)
#   --urls-file FILE      where the URL list goes, default ./sglang_urls.txt
#   --log-dir DIR         server logs, default ./sglang_logs
#   --python PY           python with sglang installed, default python
#   --health-timeout S    seconds to wait for every /health, default 1800
#   --dry-run             print the launch commands and URLs, start nothing
#   -- ARGS...            passed to every sglang.launch_server unchanged
set -euo pipefail

model_path="" tp=1 gpus_per_node="${SLURM_GPUS_ON_NODE:-8}" base_port=30000 nodes=""
urls_file="./sglang_urls.txt" log_dir="./sglang_logs" python="python" health_timeout=1800
dry_run=0 extra=()

while [ $# -gt 0 ]; do
  case "$1" in
    --model-path) model_path="$2"; shift 2 ;;
    --tp) tp="$2"; shift 2 ;;
    --gpus-per-node) gpus_per_node="$2"; shift 2 ;;
    --base-port) base_port="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --urls-file) urls_file="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --health-timeout) health_timeout="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "sglang_pool.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

[ -n "$model_path" ] || { echo "sglang_pool.sh: --model-path is required" >&2; exit 2; }
if [ "$tp" -lt 1 ] || [ $((gpus_per_node % tp)) -ne 0 ]; then
  echo "sglang_pool.sh: --tp $tp must divide --gpus-per-node $gpus_per_node" >&2; exit 2
fi
if [ -z "$nodes" ]; then
  if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    nodes="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | tr '\n' ' ')"
  elif [ "$dry_run" -eq 1 ]; then
    nodes="node0 node1"  # placeholder hosts so a dry run works outside SLURM
  else
    echo "sglang_pool.sh: not inside a SLURM allocation and no --nodes given" >&2; exit 2
  fi
fi
servers_per_node=$((gpus_per_node / tp))

commands=() urls=() logs=()
for node in $nodes; do
  for ((k = 0; k < servers_per_node; k++)); do
    port=$((base_port + k))
    first=$((k * tp))
    gpus="$(seq -s, "$first" $((first + tp - 1)))"
    log="$log_dir/sglang_${node}_${port}.log"
    # Bind to the node's own name: reachable by the learner on other nodes, not on every
    # interface of the machine. `exec env VAR=v prog`: bash's exec takes a bare `VAR=v` for
    # the program name. The dry run prints this same payload, so what it shows is what runs.
    cmd="exec env CUDA_VISIBLE_DEVICES=$gpus $(printf '%q' "$python") -m sglang.launch_server"
    cmd+=" --model-path $(printf '%q' "$model_path")"
    cmd+=" --host $node --port $port --tp-size $tp"
    [ ${#extra[@]} -gt 0 ] && cmd+=" $(printf '%q ' "${extra[@]}")"
    commands+=("$node|$cmd") urls+=("http://$node:$port") logs+=("$log")
  done
done

if [ "$dry_run" -eq 1 ]; then
  for entry in "${commands[@]}"; do
    node="${entry%%|*}"
    echo "srun --overlap --nodes=1 --ntasks=1 -w $node bash -c '${entry#*|}'"
  done
  printf '%s\n' "${urls[@]}" | sed 's/^/url: /'
  exit 0
fi

mkdir -p "$log_dir"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for i in "${!commands[@]}"; do
  entry="${commands[$i]}"
  node="${entry%%|*}"
  srun --overlap --nodes=1 --ntasks=1 -w "$node" bash -c "${entry#*|}" \
    > "${logs[$i]}" 2>&1 &
  pids+=($!)
done

deadline=$(($(date +%s) + health_timeout))
for i in "${!urls[@]}"; do
  until curl -sf -o /dev/null "${urls[$i]}/health"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "sglang_pool.sh: server ${urls[$i]} exited; ${logs[$i]} ends with:" >&2
      tail -n 40 "${logs[$i]}" >&2; exit 1
    fi
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "sglang_pool.sh: ${urls[$i]} not healthy after ${health_timeout}s; ${logs[$i]} ends with:" >&2
      tail -n 40 "${logs[$i]}" >&2; exit 1
    fi
    sleep 5
  done
done

# Written only once every server answers, so a reader never sees a half-ready pool.
printf '%s\n' "${urls[@]}" > "$urls_file.tmp" && mv "$urls_file.tmp" "$urls_file"
echo "sglang_pool.sh: ${#urls[@]} servers healthy; URLs in $urls_file" >&2
wait
