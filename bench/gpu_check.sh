#!/usr/bin/env bash
# The GPU checks of one lent device session (README "GPU", bench/README.md "GPU runs"), as one prepared script:
# the CUDA tests, Gowalla with the minute preset and with the recipe (accuracy bench, model on the GPU), and the
# whole-pipeline bench with --device gpu. Every step has its own time limit and log; a failing step does not stop
# the next one. Results land under bench/results/ as on any machine and are packed into $OUT/results.tgz.
#
# The device machine has CUDA, torch, cupy and PyG but neither RAPIDS nor network: the pure-Python and binary
# wheels this project needs beyond its image travel in .whl/ (pip download for cp312, see bench/README.md), the
# Gowalla split in .gpudata/gowalla. Frames stay on pandas there (no cuDF); the model runs on CUDA.
#
#   [EVENTS=N PIPELINE_LIMIT=S] bash bench/gpu_check.sh [STEP ...]
# steps: tests minute recipe pipeline pipeline:N homepage1 etlscale etlthreads (default: tests minute recipe pipeline).
# etlscale: the ETL's strong scaling on the machine's CPU cores (worker processes 1, 2, 4, 8, 16; pandas once; polars
# is not installed there), `python -m bench etl-strong`; etlthreads: the same with worker threads.
set -u
OUT=${OUT:-/tmp/homerank-gpu-out}
mkdir -p "$OUT/logs"
SITE=/tmp/homerank-site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the source tree as an importable package without installing it: homerank.engine -> engine/, ...
for part in engine gnn homepage jobs; do [ -e "homerank/$part" ] || ln -s "../$part" "homerank/$part"; done
{
  date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, torch, pandas, numpy, scipy, pyarrow, dask, torch_geometric as g
print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))
print('pandas', pandas.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'pyarrow',
      pyarrow.__version__, 'dask', dask.__version__, 'pyg', g.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/logs/NAME.log, record rc and seconds
  local name=$1 limit=$2 start rc
  shift 2
  start=$EPOCHREALTIME
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  printf '%s rc=%s seconds=%.1f\n' "$name" "$rc" "$(awk "BEGIN {print $EPOCHREALTIME - $start}")" | tee -a "$OUT/steps.txt"
  tail -n 15 "$OUT/logs/$name.log"
  pack
}

pack() {  # everything so far into $OUT/results.tgz (again after each step: a later step may be cut off)
  tar czf "$OUT/results.tgz" bench/results/accuracy/gowalla-minute-gpu bench/results/accuracy/gowalla-gpu \
    bench/results/pipeline/events-*-workers-8-gpu.* bench/results/etl/strong-events-*cpu* \
    -C "$OUT" logs env.txt steps.txt 2>/dev/null
}

DATA=${GOWALLA:-.gpudata/gowalla}
EVENTS=${EVENTS:-1000000}  # the pipeline step's log size (an integer: it names the result files)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests minute recipe pipeline)
for name in "${steps[@]}"; do
  case $name in
    tests) step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -m gpu ;;
    minute) step minute 180 python3 bench/accuracy_bench.py --config preset:minute --name gowalla-minute-gpu \
              --data "$DATA" --run /tmp/runs/gowalla-minute-gpu --peer-budget 15 ;;
    pipeline|pipeline:*)  # pipeline:N runs it at N events (several sizes in one call)
      events=${name#pipeline:}; [ "$events" = pipeline ] && events=$EVENTS
      step "pipeline-$events" "${PIPELINE_LIMIT:-150}" python3 -m bench pipeline --events "$events" --workers 8 \
        --device gpu --data /tmp/bench-data --json "bench/results/pipeline/events-$events-workers-8-gpu.json" ;;
    homepage1)  # the pipeline step's homepage again, in the stage's process (homepage.processes=1), for comparison
      run_dir=/tmp/bench-data/pipeline/events-$EVENTS-workers-8/run
      step homepage1 "${PIPELINE_LIMIT:-150}" python3 -m homerank.jobs.cli homepage --out "$run_dir" \
        --set homepage.processes=1
      grep -h "homepage" "$run_dir"/logs/*.log > "$OUT/logs/homepage-lines.log" 2>/dev/null; pack ;;
    etlscale) step etlscale "${ETL_LIMIT:-300}" python3 -m bench etl-strong --events "${ETL_EVENTS:-10000000}" \
                --workers "${ETL_WORKERS:-1,2,4,8,16}" --processes --data /tmp/bench-data ;;
    etlthreads) step etlthreads "${ETL_LIMIT:-300}" python3 -m bench etl-strong --events "${ETL_EVENTS:-10000000}" \
                  --workers "${ETL_WORKERS:-1,2,4,8,16}" --data /tmp/bench-data \
                  --json "bench/results/etl/strong-events-${ETL_EVENTS:-10000000}-$(nproc)cpu-threads.json" ;;
    recipe) step recipe 180 python3 bench/accuracy_bench.py --config preset:recipe --name gowalla-gpu \
              --data "$DATA" --run /tmp/runs/gowalla-gpu --skip-peers ;;
    *) echo "unknown step $name" ;;
  esac
done
ls -la "$OUT"
