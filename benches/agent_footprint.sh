#!/usr/bin/env bash
# The agent's steady-state cost next to prometheus-node-exporter, measured side by side in one run.
#
# Both run for DURATION seconds at a 1 s interval on this host: the agent collects node metrics
# from the real /proc and pod metrics from a cgroup v2 tree of PODS pods (written to a temp dir);
# node_exporter is scraped once a second, and so is the agent's /metrics, as Prometheus would.
# CPU is utime+stime over the window from /proc/<pid>/stat; memory is VmRSS at the end and VmHWM.
#
# With MODELS=1 the measured agent scores with models for every family trained from its own lake:
# first the agent runs TRAIN_SECS at TRAIN_INTERVAL over the same host and pod tree, forwarding
# to an aggregator (HTTP ingest) that writes a lake directory; then `selfheal model train
# --family F --input <lake>` with the trainer's defaults for each family the lake holds, and
# `selfheal model publish` into a store the measured agent loads (`models.source`). Model sizes
# and the families loaded are printed before the measurement.
#
#   benches/agent_footprint.sh                 # DURATION=60 PODS=100 MODELS=0
#   DURATION=300 benches/agent_footprint.sh
#   MODELS=1 TRAIN_SECS=240 TRAIN_INTERVAL=0.2 benches/agent_footprint.sh
#   POD_WATCH=handwritten benches/agent_footprint.sh   # pod identity from benches/kube_api_stub.py,
#   POD_WATCH=kube benches/agent_footprint.sh          # watched by either client implementation
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
PODS=${PODS:-100}
MODELS=${MODELS:-0}
TRAIN_SECS=${TRAIN_SECS:-240}
TRAIN_INTERVAL=${TRAIN_INTERVAL:-0.2}
POD_WATCH=${POD_WATCH:-}
features=(); [ "$POD_WATCH" = kube ] && features=(--features selfheal-agent/kube)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/selfheal/target}"
command -v prometheus-node-exporter >/dev/null || {
  echo "installing prometheus-node-exporter (Debian)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-node-exporter >/dev/null
}
cargo build --release -q --bin selfheal "${features[@]}"
bin="$CARGO_TARGET_DIR/release/selfheal"

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

python3 - "$tmp/cgroup" "$PODS" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
def w(p, t):
    os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "w").write(t)
w(f"{root}/cgroup.controllers", "cpuset cpu io memory pids\n")
for i in range(n):
    u = f"{i:08x}_0000_4000_8000_{i:012x}"
    d = f"{root}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
    w(f"{d}/cpu.stat", f"usage_usec {1000000+i}\nuser_usec 1\nsystem_usec 0\nnr_periods 100\nnr_throttled 1\nthrottled_usec 1000\n")
    w(f"{d}/cpu.max", "200000 100000\n")
    w(f"{d}/memory.current", f"{100000000+i*4096}\n")
    w(f"{d}/memory.max", "536870912\n")
    w(f"{d}/memory.stat", "anon 90000000\nfile 10000000\ninactive_file 5000000\n")
    w(f"{d}/memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    for f in ("cpu.pressure", "memory.pressure", "io.pressure"):
        w(f"{d}/{f}", "some avg10=0.00 avg60=0.00 avg300=0.00 total=500\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=100\n")
    w(f"{d}/cgroup.procs", "")
    w(f"{d}/cri-containerd-0.scope/cgroup.procs", "")
PY

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
models_env=()
if [ "$MODELS" = 1 ]; then
  agg_port=$(port); train_port=$(port)
  SELFHEAL_LOG=warn SELFHEAL_AGGREGATOR_LISTEN_ADDR="127.0.0.1:$agg_port" \
    SELFHEAL_AGGREGATOR_INGEST__SOURCE=http SELFHEAL_AGGREGATOR_LAKE__LOCATION="$tmp/lake" \
    SELFHEAL_AGGREGATOR_CHECKPOINT__DIR="$tmp/checkpoints" \
    "$bin" aggregator >/dev/null 2>"$tmp/aggregator.log" &
  pids+=($!); agg=$!
  SELFHEAL_LOG=warn SELFHEAL_AGENT_INTERVAL_SECS="$TRAIN_INTERVAL" SELFHEAL_AGENT_CGROUP_ROOT="$tmp/cgroup" \
    SELFHEAL_AGENT_LISTEN_ADDR="127.0.0.1:$train_port" SELFHEAL_AGENT_SPOOL__DIR="$tmp/spool" \
    SELFHEAL_AGENT_FORWARD__SINK=http \
    SELFHEAL_AGENT_FORWARD__HTTP__URL="http://127.0.0.1:$agg_port/v1/ingest" \
    "$bin" agent >/dev/null 2>"$tmp/train-agent.log" &
  pids+=($!); train_agent=$!
  echo "recording the agent's own lake for ${TRAIN_SECS} s at ${TRAIN_INTERVAL} s" >&2
  sleep "$TRAIN_SECS"
  kill -TERM "$train_agent"; wait "$train_agent" || true
  sleep 2
  kill -TERM "$agg"; wait "$agg" || true
  for family in cpu memory traffic pressure restarts; do
    if "$bin" model train --family "$family" --input "$tmp/lake" --out "$tmp/model-$family" \
        --version footprint >/dev/null 2>"$tmp/train-$family.log"; then
      "$bin" model publish "$tmp/model-$family" --to "$tmp/store" >/dev/null
      python3 - "$tmp/model-$family" "$family" <<'PY'
import json, os, sys
d, family = sys.argv[1], sys.argv[2]
m = json.load(open(os.path.join(d, "manifest.json")))
print(f"model {family}: {len(m['features']['signals'])} signals, {m['forests']} forests x "
      f"{m['n_trees']} trees (psi {m['max_samples']}), model.onnx {os.path.getsize(os.path.join(d, 'model.onnx'))} bytes")
PY
    else
      echo "model $family: not trained: $(tail -1 "$tmp/train-$family.log")"
    fi
  done
  models_env=(SELFHEAL_AGENT_MODELS__SOURCE="$tmp/store")
fi
agent_port=$(port); ne_port=$(port)
pod_env=(SELFHEAL_AGENT_PODS__SOURCE=none)
if [ -n "$POD_WATCH" ]; then
  api_port=$(port); python3 benches/kube_api_stub.py "$api_port" "$PODS" & pids+=($!); sleep 1
  pod_env=(SELFHEAL_AGENT_PODS__SOURCE=api SELFHEAL_AGENT_PODS__API_URL="http://127.0.0.1:$api_port")
fi
env "${pod_env[@]}" SELFHEAL_LOG=warn SELFHEAL_AGENT_INTERVAL_SECS=1 SELFHEAL_AGENT_CGROUP_ROOT="$tmp/cgroup" \
  SELFHEAL_AGENT_LISTEN_ADDR="127.0.0.1:$agent_port" "${models_env[@]}" "$bin" agent >/dev/null 2>"$tmp/agent.log" &
pids+=($!); agent=$!
prometheus-node-exporter --web.listen-address="127.0.0.1:$ne_port" >/dev/null 2>&1 &
pids+=($!); ne=$!

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
kib() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }
scrape() { curl -s -o /dev/null "http://127.0.0.1:$agent_port/metrics"; curl -s -o /dev/null "http://127.0.0.1:$ne_port/metrics"; }

for _ in 1 2 3 4 5; do scrape || true; sleep 1; done   # warm-up: both have run a few cycles
a0=$(ticks $agent); n0=$(ticks $ne); t0=$(date +%s.%N)
for _ in $(seq "$DURATION"); do scrape; sleep 1; done
a1=$(ticks $agent); n1=$(ticks $ne); t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
pods_seen=$(curl -s "http://127.0.0.1:$agent_port/metrics" | awk '$1=="selfheal_agent_pods" {print $2}')
if [ "$MODELS" = 1 ]; then
  echo "models in use: $(curl -s "http://127.0.0.1:$agent_port/metrics" | grep -c '^selfheal_agent_model_info{') families"
  grep -h 'ModelRefused' "$tmp/agent.log" | head -3 || true
  anon=$(awk '$1=="Anonymous:" {print $2}' "/proc/$agent/smaps_rollup")
  echo "agent anonymous memory: $((anon / 1024)) MiB"
fi
python3 - "$a0" "$a1" "$n0" "$n1" "$t0" "$t1" "$hz" "$(kib $agent VmRSS)" "$(kib $agent VmHWM)" \
  "$(kib $ne VmRSS)" "$(kib $ne VmHWM)" "$DURATION" "$pods_seen" <<'PY'
import sys
a0, a1, n0, n1 = map(int, sys.argv[1:5]); t0, t1 = map(float, sys.argv[5:7]); hz = int(sys.argv[7])
a_rss, a_hwm, n_rss, n_hwm = (int(x) / 1024 for x in sys.argv[8:12]); dur, pods = sys.argv[12], sys.argv[13]
wall = t1 - t0
a_cpu = (a1 - a0) / hz / wall * 100; n_cpu = (n1 - n0) / hz / wall * 100
print(f"window {wall:.1f} s at 1 s interval, agent sees {pods} pods")
print(f"{'':28}{'CPU % of a core':>16}{'RSS MiB':>10}{'peak RSS MiB':>14}")
print(f"{'selfheal agent':28}{a_cpu:>16.3f}{a_rss:>10.1f}{a_hwm:>14.1f}")
print(f"{'prometheus-node-exporter':28}{n_cpu:>16.3f}{n_rss:>10.1f}{n_hwm:>14.1f}")
print(f"{'agent / node_exporter':28}{a_cpu / n_cpu if n_cpu else float('nan'):>16.2f}{a_rss / n_rss:>10.2f}{a_hwm / n_hwm:>14.2f}")
PY
