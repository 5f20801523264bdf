#!/usr/bin/env bash
# Runs SRPO training on a SLURM GPU allocation: the learner (`python -m srpo_jax.main`, one
# process per node, 8 GPUs each, one JAX program over all of them) on the first
# --learner-nodes nodes, and, when nodes are left over, an SGLang rollout pool on the rest
# (launch/sglang_pool.sh). New weights reach the pool through --shared-dir, a directory every
# node mounts: the learner exports bf16 safetensors to $shared/weights and the servers load
# them (config.rollout.sglang.sync=update_from_disk). With no rollout nodes the learner uses
# its embedded JAX sampler.
#
# Example: 3 nodes, 2 learner nodes (16 GPUs: data=2 x the config's one-node tensor=8 layout)
# + 1 node of 4 SGLang servers (tp=2):
#   sbatch -N 3 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh \
#       --learner-nodes 2 --sglang-tp 2 --model-path /shared/Qwen3-8B \
#       --shared-dir /shared/runs/chem_srpo --config configs/qwen3_8b_chem.py:method=srpo \
#       -- --config.train.num_steps=200
# Print what would run, outside SLURM (placeholder hosts node0..):
#   bash launch/slurm_gpu.sh --dry-run --num-nodes 2 --model-path /m --shared-dir /s \
#       --config configs/qwen3_8b_chem.py:method=srpo
#
# Environment it sets for the learner:
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.95   JAX's GPU pool (default 0.75); the memory plan
#                                         (python -m srpo_jax.aot.plan) assumes 0.95
#   XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true
#                                         overlap FSDP all-gathers / reduce-scatters with compute
# Mesh: the benchmark configs describe one 8-GPU node (mesh data*fsdp*tensor = 8, the layout
# python -m srpo_jax.aot.plan checked); across N learner nodes the script sets
# --config.mesh.data=N (one data-parallel replica per node). --mesh D,F,T sets all three.
# The coordinator is the first learner node at --port; each srun task passes its
# $SLURM_PROCID as --process_id, so jax.distributed.initialize sees every learner process.
#
# Options:
#   --config SPEC          config file[:arg] for srpo_jax.main (required)
#   --model-path PATH      HF checkpoint dir on the shared file system (required)
#   --shared-dir DIR       shared directory: workdir, weight export, SGLang URL list (required)
#   --learner-nodes N      nodes for the learner (default: all nodes)
#   --gpus-per-node N      default $SLURM_GPUS_ON_NODE, else 8; 0 = CPU mode: JAX on the CPU,
#                          one device per learner process, and a pool of one sglang-jax server
#                          per rollout node (to try the script without GPUs)
#   --sglang-tp N          GPUs per SGLang server (default 1)
#   --sglang-server KIND   sglang | sglang-jax (default sglang; sglang-jax in CPU mode).
#                          sglang-jax has no weight-update route: its servers keep the
#                          starting weights (rollout.sglang.sync=none), a launch check only
#   --sglang-python PY     python with the server kind installed (default: --python)
#   --sglang-port P        first server port on every rollout node (default 30000)
#   --sglang-args "..."    more arguments for every SGLang server (split on whitespace)
#   --deterministic        every server gets its kind's deterministic-sampling flag
#   --mesh D,F,T           mesh data,fsdp,tensor (default: data=learner nodes, rest from config)
#   --port P               coordinator port (default 12355)
#   --python PY            python with srpo_jax installed (default python)
#   --num-nodes N          dry run outside SLURM: pretend to have N nodes (node0 ...)
#   --dry-run              print the commands, run nothing
#   -- ARGS...             passed to srpo_jax.main unchanged (e.g. --config.a.b=v overrides)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -f "$here/sglang_pool.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  # sbatch runs a copy of this script in slurmd's spool directory; sglang_pool.sh is beside
  # the original, which the job's Command names (relative to the submit directory).
  original="$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')"
  [[ "$original" == /* ]] || original="${SLURM_SUBMIT_DIR:-.}/$original"
  here="$(cd "$(dirname "$original")" && pwd)"
fi
config="" model_path="" shared_dir="" learner_nodes=0 gpus_per_node="${SLURM_GPUS_ON_NODE:-8}"
sglang_tp=1 sglang_server="" sglang_python="" sglang_port=30000 sglang_args="" deterministic=0
mesh="" port=12355 python="python" num_nodes=0 dry_run=0 extra=()

while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --model-path) model_path="$2"; shift 2 ;;
    --shared-dir) shared_dir="$2"; shift 2 ;;
    --learner-nodes) learner_nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus_per_node="$2"; shift 2 ;;
    --sglang-tp) sglang_tp="$2"; shift 2 ;;
    --sglang-server) sglang_server="$2"; shift 2 ;;
    --sglang-python) sglang_python="$2"; shift 2 ;;
    --sglang-port) sglang_port="$2"; shift 2 ;;
    --sglang-args) sglang_args="$2"; shift 2 ;;
    --deterministic) deterministic=1; shift ;;
    --mesh) mesh="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --num-nodes) num_nodes="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "error: slurm_gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

for name in config model_path shared_dir; do
  if [ -z "${!name}" ]; then
    echo "error: slurm_gpu.sh: --${name//_/-} is required (see --help)" >&2; exit 2
  fi
done

if [ -n "${SLURM_JOB_NODELIST:-}" ] && [ "$num_nodes" -eq 0 ]; then
  mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
elif [ "$dry_run" -eq 1 ] || [ "$num_nodes" -gt 0 ]; then
  [ "$num_nodes" -gt 0 ] || num_nodes=1
  nodes=()
  for ((i = 0; i < num_nodes; i++)); do nodes+=("node$i"); done
else
  echo "error: slurm_gpu.sh: not inside a SLURM allocation (run it with sbatch/salloc, or --dry-run)" >&2
  exit 2
fi

[ "$learner_nodes" -gt 0 ] || learner_nodes=${#nodes[@]}
if [ "$learner_nodes" -gt "${#nodes[@]}" ]; then
  echo "error: slurm_gpu.sh: --learner-nodes $learner_nodes > ${#nodes[@]} nodes in the allocation" >&2
  exit 2
fi
learners=("${nodes[@]:0:$learner_nodes}")
rollout=("${nodes[@]:$learner_nodes}")
coordinator="${learners[0]}:$port"
if [ -z "$sglang_server" ]; then
  sglang_server=sglang
  [ "$gpus_per_node" -eq 0 ] && sglang_server=sglang-jax
fi
if [ "$gpus_per_node" -eq 0 ]; then
  devices=$learner_nodes unit="CPU devices"
else
  devices=$((learner_nodes * gpus_per_node)) unit=GPUs
fi
workdir="$shared_dir/workdir"
urls_file="$shared_dir/sglang_urls.txt"

main_args=(
  -m srpo_jax.main "--config=$config" "--workdir=$workdir"
  "--config.model.hf_path=$model_path"
)
if [ -n "$mesh" ]; then
  IFS=, read -r mesh_d mesh_f mesh_t <<< "$mesh"
  if [ $((mesh_d * mesh_f * mesh_t)) -ne "$devices" ]; then
    echo "error: slurm_gpu.sh: --mesh $mesh has $((mesh_d * mesh_f * mesh_t)) devices, not $devices" >&2
    exit 2
  fi
  main_args+=("--config.mesh.data=$mesh_d" "--config.mesh.fsdp=$mesh_f" "--config.mesh.tensor=$mesh_t")
else
  main_args+=("--config.mesh.data=$learner_nodes")
fi
main_args+=("--coordinator_address=$coordinator" "--num_processes=$learner_nodes")
if [ ${#rollout[@]} -gt 0 ]; then
  main_args+=(
    "--config.rollout.engine=sglang"
    "--config.rollout.sglang.export_dir=$shared_dir/weights"
    "--config.rollout.sglang.urls=@URLS@"
  )
  # sglang-jax cannot load new weights: the run would stop at the first push.
  [ "$sglang_server" = sglang-jax ] && main_args+=("--config.rollout.sglang.sync=none")
fi
main_args+=("${extra[@]}")

if [ "$gpus_per_node" -eq 0 ]; then
  learner_env="JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=1"
else
  learner_env="XLA_PYTHON_CLIENT_MEM_FRACTION=0.95"
  learner_env+=" XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true"
fi
nodelist="$(IFS=,; echo "${learners[*]}")"

squote() {  # one shell word in single quotes (readable in dry runs, safe for eval)
  local q="'\\''"
  printf "'%s'" "${1//\'/$q}"
}

learner_cmd() {  # $1: the python tuple literal of SGLang URLs (or empty)
  local args=("${main_args[@]}") quoted
  for i in "${!args[@]}"; do args[i]="${args[$i]//@URLS@/$1}"; done
  quoted="$(printf '%q ' "$python" "${args[@]}")"
  # $SLURM_PROCID is expanded by each srun task, not here.
  printf 'srun --nodes=%s --ntasks=%s --ntasks-per-node=1 --nodelist=%s --export=ALL bash -c %s' \
    "$learner_nodes" "$learner_nodes" "$nodelist" \
    "$(squote "exec env $learner_env ${quoted}--process_id=\$SLURM_PROCID")"
}

pool_cmd=(bash "$here/sglang_pool.sh" --model-path "$model_path" --server "$sglang_server"
  --tp "$sglang_tp" --gpus-per-node "$gpus_per_node" --nodes "${rollout[*]}" --base-port "$sglang_port"
  --urls-file "$urls_file" --log-dir "$shared_dir/sglang_logs"
  --python "${sglang_python:-$python}" --sglang-args "$sglang_args")
[ "$deterministic" -eq 1 ] && pool_cmd+=(--deterministic)

if [ "$dry_run" -eq 1 ]; then
  echo "# learner: ${learners[*]} ($devices $unit, coordinator $coordinator)"
  if [ ${#rollout[@]} -gt 0 ]; then
    echo "# rollout pool: ${rollout[*]}"
    printf '%q ' "${pool_cmd[@]}" --dry-run; echo
    "${pool_cmd[@]}" --dry-run | sed 's/^/#   /'
    learner_cmd "<URLs from $urls_file>"; echo
  else
    echo "# rollout: embedded JAX engine on the learner GPUs"
    learner_cmd ""; echo
  fi
  exit 0
fi

mkdir -p "$workdir" "$shared_dir/weights"
pool_pid=""
cleanup() { [ -n "$pool_pid" ] && kill "$pool_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

urls=""
if [ ${#rollout[@]} -gt 0 ]; then
  rm -f "$urls_file"
  "${pool_cmd[@]}" &
  pool_pid=$!
  # sglang_pool.sh writes the URL list only once every server answers /health.
  until [ -s "$urls_file" ]; do
    kill -0 "$pool_pid" 2>/dev/null || { echo "error: slurm_gpu.sh: the SGLang pool failed" >&2; exit 1; }
    sleep 2
  done
  urls="($(sed "s/.*/'&',/" "$urls_file" | tr -d '\n'))"
fi
eval "$(learner_cmd "$urls")"
