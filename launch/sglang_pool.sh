#!/usr/bin/env bash
# Starts a pool of SGLang servers on the nodes of a SLURM allocation, one server per --tp
# GPUs, and writes their URLs (one per line) to a file that SGLangConfig.urls / the
# learner's rollout config reads. The servers live as long as this script: it waits on them,
# and stops them all when it exits or is interrupted. Every server gets --skip-tokenizer-init:
# the learner sends token ids, and the weight exports it writes carry no tokenizer files.
#
# Server kinds: `sglang` (mainline SGLang, python -m sglang.launch_server, GPUs) and
# `sglang-jax` (python -m sgl_jax.launch_server). --gpus-per-node 0 is the CPU mode: one
# sglang-jax server per node on the CPU (JAX_PLATFORMS=cpu, --device cpu, --tp fake CPU
# devices), to try the pool without GPUs.
#
# Example (inside `salloc -N 2 --gpus-per-node=8` or an sbatch script; the checkpoint and the
# export dir must be on a filesystem every node reads):
#   bash launch/sglang_pool.sh --model-path /shared/ckpt/qwen3-8b --tp 2 \
#       --urls-file /shared/run1/sglang_urls.txt --sglang-args "--mem-fraction-static 0.8"
# Print the commands without running anything:
#   bash launch/sglang_pool.sh --model-path /shared/ckpt/qwen3-8b --tp 2 --dry-run
#
# Options:
#   --model-path PATH     HF checkpoint to serve (required)
#   --server KIND         sglang | sglang-jax, default sglang (sglang-jax with --gpus-per-node 0)
#   --tp N                GPUs per server (tensor parallel size), default 1
#   --gpus-per-node N     default: $SLURM_GPUS_ON_NODE, else 8; 0 = CPU mode (see above)
#   --base-port P         first port on every node, default 30000 (server k uses P + k)
#   --nodes "a b"         hosts to use, default: the allocation's ($SLURM_JOB_NODELIST)
#   --urls-file FILE      where the URL list goes, default ./sglang_urls.txt
#   --log-dir DIR         server logs, default ./sglang_logs
#   --python PY           python with the server kind installed, default python
#   --health-timeout S    seconds to wait for every /health, default 1800
#   --sglang-args "..."   more server arguments, split on whitespace, to every server
#   --deterministic       the server kind's deterministic flag (sglang:
#                         --enable-deterministic-inference, sglang-jax:
#                         --enable-deterministic-sampling), so sampling_seed is honoured
#   --dry-run             print the launch commands and URLs, start nothing
#   -- ARGS...            passed to every server unchanged (after --sglang-args)
set -euo pipefail

model_path="" server="" tp=1 gpus_per_node="${SLURM_GPUS_ON_NODE:-8}" base_port=30000 nodes=""
urls_file="./sglang_urls.txt" log_dir="./sglang_logs" python="python" health_timeout=1800
sglang_args="" deterministic=0 dry_run=0 extra=()

while [ $# -gt 0 ]; do
  case "$1" in
    --model-path) model_path="$2"; shift 2 ;;
    --server) server="$2"; shift 2 ;;
    --tp) tp="$2"; shift 2 ;;
    --gpus-per-node) gpus_per_node="$2"; shift 2 ;;
    --base-port) base_port="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --urls-file) urls_file="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --health-timeout) health_timeout="$2"; shift 2 ;;
    --sglang-args) sglang_args="$2"; shift 2 ;;
    --deterministic) deterministic=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "error: sglang_pool.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

[ -n "$model_path" ] || { echo "error: sglang_pool.sh: --model-path is required" >&2; exit 2; }
if [ -z "$server" ]; then
  server=sglang
  [ "$gpus_per_node" -eq 0 ] && server=sglang-jax
fi
case "$server" in
  sglang) module=sglang.launch_server determinism=--enable-deterministic-inference ;;
  sglang-jax) module=sgl_jax.launch_server determinism=--enable-deterministic-sampling ;;
  *) echo "error: sglang_pool.sh: --server $server is not sglang or sglang-jax" >&2; exit 2 ;;
esac
if [ "$gpus_per_node" -eq 0 ]; then
  if [ "$server" != sglang-jax ]; then
    echo "error: sglang_pool.sh: --gpus-per-node 0 (CPU mode) runs sglang-jax servers, not $server" >&2
    exit 2
  fi
  [ "$tp" -ge 1 ] || { echo "error: sglang_pool.sh: --tp $tp must be >= 1" >&2; exit 2; }
elif [ "$tp" -lt 1 ] || [ $((gpus_per_node % tp)) -ne 0 ]; then
  echo "error: sglang_pool.sh: --tp $tp must divide --gpus-per-node $gpus_per_node" >&2; exit 2
fi
# Split on any whitespace, newlines included (read -d '' ends at the input's end, status 1);
# no quoting: server arguments are flags and paths without spaces.
read -r -d '' -a user_args <<< "$sglang_args" || true
[ "$deterministic" -eq 1 ] && user_args+=("$determinism")
user_args+=("${extra[@]}")
if [ -z "$nodes" ]; then
  if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    nodes="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | tr '\n' ' ')"
  elif [ "$dry_run" -eq 1 ]; then
    nodes="node0 node1"  # placeholder hosts so a dry run works outside SLURM
  else
    echo "error: sglang_pool.sh: not inside a SLURM allocation and no --nodes given" >&2; exit 2
  fi
fi
servers_per_node=1
[ "$gpus_per_node" -eq 0 ] || servers_per_node=$((gpus_per_node / tp))

commands=() urls=() logs=()
for node in $nodes; do
  for ((k = 0; k < servers_per_node; k++)); do
    port=$((base_port + k))
    first=$((k * tp))
    log="$log_dir/sglang_${node}_${port}.log"
    if [ "$gpus_per_node" -eq 0 ]; then
      # One XLA CPU device per tensor-parallel rank, whatever XLA_FLAGS the job inherited.
      devices="JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$tp"
    else
      devices="CUDA_VISIBLE_DEVICES=$(seq -s, "$first" $((first + tp - 1)))"
    fi
    # Bind to the node's own name: reachable by the learner on other nodes, not on every
    # interface of the machine. `exec env VAR=v prog`: bash's exec takes a bare `VAR=v` for
    # the program name. The dry run prints this same payload, so what it shows is what runs.
    cmd="exec env $devices $(printf '%q' "$python") -m $module"
    cmd+=" --model-path $(printf '%q' "$model_path") --skip-tokenizer-init"
    [ "$gpus_per_node" -eq 0 ] && cmd+=" --device cpu"
    cmd+=" --host $node --port $port --tp-size $tp"
    [ ${#user_args[@]} -gt 0 ] && cmd+=" $(printf '%q ' "${user_args[@]}")"
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
    sleep 2
  done
done

# Written only once every server answers, so a reader never sees a half-ready pool.
printf '%s\n' "${urls[@]}" > "$urls_file.tmp" && mv "$urls_file.tmp" "$urls_file"
echo "sglang_pool.sh: ${#urls[@]} servers healthy; URLs in $urls_file" >&2
wait
