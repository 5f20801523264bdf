#!/usr/bin/env bash
# Runs SRPO training on a Cloud TPU VM slice: the same `python -m srpo_jax.main` command on
# every worker of the slice (gcloud compute tpus tpu-vm ssh --worker=all), one JAX process per
# worker, one program over all chips. Worker 0 is the coordinator; each worker reads its own
# index from the TPU metadata server and passes it as --process_id. Rollouts come from the
# embedded JAX sampler on the same chips, or from an SGLang pool elsewhere (--sglang-urls);
# then --shared-dir must be a directory both sides mount (e.g. a gcsfuse or Filestore path)
# for the weight export.
#
# Example (v5p-16: 2 workers x 4 chips, tensor=8), repo checked out at ~/srpo_jax on workers:
#   bash launch/tpu_vm.sh --tpu my-v5p-16 --zone us-east5-a --repo-dir '~/srpo_jax' \
#       --config configs/qwen3_8b_chem.py:method=srpo --model-path /mnt/disks/ckpt/Qwen3-8B \
#       --shared-dir /mnt/shared/chem_srpo
# Print what would run without gcloud (placeholder coordinator address):
#   bash launch/tpu_vm.sh --dry-run --tpu my-v5p-16 --zone z --num-workers 2 --chips 8 \
#       --config configs/qwen3_8b_chem.py:method=srpo --model-path /m --shared-dir /s
#
# Environment it sets on every worker:
#   LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true
#                          overlap FSDP all-gathers / reduce-scatters with compute
#   (no XLA_PYTHON_CLIENT_MEM_FRACTION: TPU runtimes hand JAX the whole HBM)
#
# Options:
#   --tpu NAME             TPU VM / slice name (required)
#   --zone ZONE            its zone (required)
#   --project P            gcloud project (default: gcloud's configured one)
#   --config SPEC          config file[:arg] for srpo_jax.main (required)
#   --model-path PATH      HF checkpoint dir readable on every worker (required)
#   --shared-dir DIR       workdir and weight export, readable on every worker (required)
#   --repo-dir DIR         srpo_jax checkout on the workers (default ~/srpo_jax)
#   --python PY            python on the workers (default python3)
#   --chips N              chips in the slice (default: from gcloud); sets the mesh size
#   --mesh D,F,T           mesh data,fsdp,tensor (default: tensor=min(chips, 8), data=the rest,
#                          the one-node layout of the benchmark configs per 8 chips)
#   --num-workers N        workers in the slice (default: from gcloud)
#   --port P               coordinator port (default 8476)
#   --sglang-urls "u1 u2"  use these SGLang servers instead of the embedded engine
#   --dry-run              print the commands, run nothing
#   -- ARGS...             passed to srpo_jax.main unchanged
set -euo pipefail

# The default repo dir is expanded on the workers (their home), not here.
# shellcheck disable=SC2088
tpu="" zone="" project="" config="" model_path="" shared_dir="" repo_dir="~/srpo_jax"
python="python3" mesh="" chips=0 num_workers=0 port=8476 sglang_urls="" dry_run=0 extra=()

while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --model-path) model_path="$2"; shift 2 ;;
    --shared-dir) shared_dir="$2"; shift 2 ;;
    --repo-dir) repo_dir="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --chips) chips="$2"; shift 2 ;;
    --mesh) mesh="$2"; shift 2 ;;
    --num-workers) num_workers="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --sglang-urls) sglang_urls="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "tpu_vm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

for name in tpu zone config model_path shared_dir; do
  if [ -z "${!name}" ]; then
    echo "tpu_vm.sh: --${name//_/-} is required (see --help)" >&2; exit 2
  fi
done

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[ -n "$project" ] && where+=(--project "$project")

if [ "$dry_run" -eq 1 ]; then
  [ "$num_workers" -gt 0 ] || num_workers=1
  [ "$chips" -gt 0 ] || chips=$((num_workers * 4))
  coordinator_ip="WORKER0_IP"
else
  # One internal IP per worker; worker 0's is the coordinator's.
  mapfile -t ips < <("${gcloud_tpu[@]}" describe "$tpu" "${where[@]}" \
    --format='value[delimiter="\n"](networkEndpoints[].ipAddress)')
  [ ${#ips[@]} -gt 0 ] || { echo "tpu_vm.sh: no workers found for $tpu" >&2; exit 1; }
  [ "$num_workers" -gt 0 ] || num_workers=${#ips[@]}
  coordinator_ip="${ips[0]}"
  if [ "$chips" -eq 0 ]; then
    # Accelerator types name TensorCores for v2-v4 and v5p (2 per chip), chips for v5e/v6e.
    type="$("${gcloud_tpu[@]}" describe "$tpu" "${where[@]}" --format='value(acceleratorType)')"
    cores="${type##*-}"
    case "$type" in
      v5litepod-*|v6e-*) chips=$cores ;;
      *) chips=$((cores / 2)) ;;
    esac
  fi
fi

if [ -z "$mesh" ]; then
  tensor=$((chips < 8 ? chips : 8))
  mesh="$((chips / tensor)),1,$tensor"
fi
IFS=, read -r mesh_d mesh_f mesh_t <<< "$mesh"
if [ $((mesh_d * mesh_f * mesh_t)) -ne "$chips" ]; then
  echo "tpu_vm.sh: --mesh $mesh has $((mesh_d * mesh_f * mesh_t)) devices, not $chips" >&2; exit 2
fi
main_args=(
  -m srpo_jax.main "--config=$config" "--workdir=$shared_dir/workdir"
  "--config.model.hf_path=$model_path" "--config.mesh.data=$mesh_d"
  "--config.mesh.fsdp=$mesh_f" "--config.mesh.tensor=$mesh_t"
  "--coordinator_address=$coordinator_ip:$port" "--num_processes=$num_workers"
)
if [ -n "$sglang_urls" ]; then
  tuple="("
  for u in $sglang_urls; do tuple+="'$u',"; done
  main_args+=(
    "--config.rollout.engine=sglang" "--config.rollout.sglang.urls=$tuple)"
    "--config.rollout.sglang.export_dir=$shared_dir/weights"
  )
fi
main_args+=("${extra[@]}")

# Runs on each worker: its index comes from the metadata server, so one command serves all.
metadata="http://metadata.google.internal/computeMetadata/v1/instance/attributes"
remote="cd $repo_dir && mkdir -p $(printf '%q' "$shared_dir/workdir")"
remote+=" && worker=\$(curl -sf -H Metadata-Flavor:Google $metadata/agent-worker-number)"
remote+=" && LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true"
remote+=" exec $(printf '%q ' "$python" "${main_args[@]}")--process_id=\$worker"
ssh_cmd=("${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "$remote")

if [ "$dry_run" -eq 1 ]; then
  echo "# $tpu: $num_workers worker(s), $chips chips, coordinator $coordinator_ip:$port"
  if [ -n "$sglang_urls" ]; then
    echo "# rollout: SGLang servers $sglang_urls"
  else
    echo "# rollout: embedded JAX engine on the TPU chips"
  fi
  printf '%q ' "${ssh_cmd[@]:0:$((${#ssh_cmd[@]} - 1))}"
  printf "'%s'\n" "${remote//\'/\'\\\'\'}"
  exit 0
fi
exec "${ssh_cmd[@]}"
