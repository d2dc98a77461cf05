#!/usr/bin/env bash
# The benchmark figures for an accelerator (GPU / TPU), in one go.
#
#   bash benchmarks/accelerator_suite.sh [OUT_DIR]
#
# Writes one text file per benchmark into OUT_DIR (default: bench_out) and
# echoes it. Sizes are larger than the CPU defaults: 1000 MNIST points
# (40 CIFAR-10 points) in chunks of up to 1000, and FL rounds of up to 200
# clients. Certified bounds are checked against the host CPU on 100 points.
set -uo pipefail
out="${1:-bench_out}"
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONUNBUFFERED=1
quiet() { grep -v -E '^[IW][0-9]{4} ' ; }
status() { echo "== $1 exit status $2 (124: stopped by its timeout)"; }

python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax",
  flax.__version__, "optax", optax.__version__, jax.devices())' | tee "$out/versions.txt"
timeout 900 python3 benchmarks/certify.py --num_points=1000 \
  --chunk_sizes=50,250,1000 --repeats=3 --compare_cpu 2>&1 | quiet | tee "$out/certify.txt"
status certify "${PIPESTATUS[0]}"
timeout 600 python3 benchmarks/round_speed.py --clients=5,50,200 \
  --modes=vmap,map:25,loop 2>&1 | quiet | tee "$out/round_speed.txt"
status round_speed "${PIPESTATUS[0]}"
timeout 600 python3 benchmarks/round_speed.py --clients=50,200 --adv_steps=10 \
  --modes=vmap,loop 2>&1 | quiet | tee "$out/round_speed_pgd.txt"
status round_speed_pgd "${PIPESTATUS[0]}"
timeout 600 python3 benchmarks/sweep_speed.py --runs=32,128 --blocks=2 --runs_chunk=0 \
  2>&1 | quiet | tee "$out/sweep_speed.txt"
status sweep_speed "${PIPESTATUS[0]}"
timeout 300 python3 benchmarks/aggregators.py --skip_numpy 2>&1 | quiet | tee "$out/aggregators.txt"
status aggregators "${PIPESTATUS[0]}"
