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
#   SELFHEAL_BIN=/path/to/selfheal MODELS=1 benches/agent_footprint.sh   # a prebuilt binary
#   POD_WATCH=handwritten SAMPLES=4 benches/agent_footprint.sh
#       pod identity from benches/kube_api_stub.py (the `api` source), CPU per sample as well.
#       (POD_WATCH=kube / both ran the `kube_runtime` variant beside it until that variant was
#       removed; see docs/benchmarks.md "Pod watch".)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
PODS=${PODS:-100}
MODELS=${MODELS:-0}
TRAIN_SECS=${TRAIN_SECS:-240}
TRAIN_INTERVAL=${TRAIN_INTERVAL:-0.2}
POD_WATCH=${POD_WATCH:-}
SAMPLES=${SAMPLES:-1}
features=()
case "$POD_WATCH" in
  ""|handwritten) ;;
  both) ;;  # only in a tree that has the kube variant again (built separately below)
  *) echo "POD_WATCH must be empty or handwritten (the kube variant was removed)" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/selfheal/target}"
command -v prometheus-node-exporter >/dev/null || {
  echo "installing prometheus-node-exporter (Debian)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-node-exporter >/dev/null
}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
if [ "$POD_WATCH" = both ]; then
  cargo build --release -q --bin selfheal --features selfheal-agent/kube
  cp "$CARGO_TARGET_DIR/release/selfheal" "$tmp/selfheal-kube"
fi
# SELFHEAL_BIN: measure a binary built beforehand (a `dist` build, or one copied out of a
# target dir that other worktrees also build into) instead of building this tree's.
if [ -n "${SELFHEAL_BIN:-}" ]; then
  bin=$SELFHEAL_BIN
else
  cargo build --release -q --bin selfheal "${features[@]}"
  bin="$CARGO_TARGET_DIR/release/selfheal"
fi

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
  # HTTP ingest takes only authenticated nodes: one token for the recording agent's node.
  token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  printf '%s' "$token" >"$tmp/agent-token"; chmod 600 "$tmp/agent-token"
  echo "footprint-node $token" >"$tmp/ingest-tokens"; chmod 600 "$tmp/ingest-tokens"
  SELFHEAL_LOG=warn SELFHEAL_AGGREGATOR_LISTEN_ADDR="127.0.0.1:$agg_port" \
    SELFHEAL_AGGREGATOR_INGEST__SOURCE=http SELFHEAL_AGGREGATOR_LAKE__LOCATION="$tmp/lake" \
    SELFHEAL_AGGREGATOR_INGEST__AUTH__TOKEN_FILE="$tmp/ingest-tokens" \
    SELFHEAL_AGGREGATOR_CHECKPOINT__DIR="$tmp/checkpoints" \
    "$bin" aggregator >/dev/null 2>"$tmp/aggregator.log" &
  pids+=($!); agg=$!
  SELFHEAL_LOG=warn SELFHEAL_AGENT_INTERVAL_SECS="$TRAIN_INTERVAL" SELFHEAL_AGENT_CGROUP_ROOT="$tmp/cgroup" \
    SELFHEAL_AGENT_LISTEN_ADDR="127.0.0.1:$train_port" SELFHEAL_AGENT_SPOOL__DIR="$tmp/spool" \
    SELFHEAL_AGENT_FORWARD__SINK=http \
    SELFHEAL_AGENT_FORWARD__HTTP__URL="http://127.0.0.1:$agg_port/v1/ingest" \
    SELFHEAL_AGENT_FORWARD__HTTP__TOKEN_FILE="$tmp/agent-token" SELFHEAL_AGENT_NODE_NAME=footprint-node \
    "$bin" agent >/dev/null 2>"$tmp/train-agent.log" &
  pids+=($!); train_agent=$!
  echo "recording the agent's own lake for ${TRAIN_SECS} s at ${TRAIN_INTERVAL} s" >&2
  sleep "$TRAIN_SECS"
  if ! kill -TERM "$train_agent" 2>/dev/null; then
    echo "the recording agent exited early:" >&2; tail -5 "$tmp/train-agent.log" >&2
    echo "aggregator:" >&2; tail -5 "$tmp/aggregator.log" >&2
    exit 1
  fi
  wait "$train_agent" || true
  sleep 2
  if ! kill -TERM "$agg" 2>/dev/null; then
    echo "the aggregator exited early:" >&2; tail -5 "$tmp/aggregator.log" >&2; exit 1
  fi
  wait "$agg" || true
  for family in cpu memory traffic pressure restarts; do
    if "$bin" model train --family "$family" --input "$tmp/lake" --out "$tmp/model-$family" \
        --version footprint >/dev/null 2>"$tmp/train-$family.log"; then
      if ! "$bin" model publish "$tmp/model-$family" --to "$tmp/store" >/dev/null 2>"$tmp/publish-$family.log"; then
        echo "model $family: trained but not published: $(tail -1 "$tmp/publish-$family.log")"
        continue
      fi
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
ne_port=$(port)
# One agent per pod-watch variant: "name binary".
variants=("agent $bin")
[ "$POD_WATCH" = both ] && variants=("handwritten $bin" "kube $tmp/selfheal-kube")
names=(); apids=(); aports=()
for v in "${variants[@]}"; do
  name=${v%% *}; vbin=${v#* }
  aport=$(port)
  pod_env=(SELFHEAL_AGENT_PODS__SOURCE=none)
  if [ -n "$POD_WATCH" ]; then
    api_port=$(port); python3 benches/kube_api_stub.py "$api_port" "$PODS" & pids+=($!); sleep 1
    pod_env=(SELFHEAL_AGENT_PODS__SOURCE=api SELFHEAL_AGENT_PODS__API_URL="http://127.0.0.1:$api_port")
  fi
  env "${pod_env[@]}" SELFHEAL_LOG=warn SELFHEAL_AGENT_INTERVAL_SECS=1 SELFHEAL_AGENT_CGROUP_ROOT="$tmp/cgroup" \
    SELFHEAL_AGENT_LISTEN_ADDR="127.0.0.1:$aport" SELFHEAL_AGENT_SPOOL__DIR="$tmp/spool-$name" \
    "${models_env[@]}" "$vbin" agent >/dev/null 2>"$tmp/agent-$name.log" &
  pids+=($!); names+=("$name"); apids+=($!); aports+=("$aport")
done
agent=${apids[0]}; agent_port=${aports[0]}
prometheus-node-exporter --web.listen-address="127.0.0.1:$ne_port" >/dev/null 2>&1 &
pids+=($!); ne=$!

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
kib() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }
scrape() {
  for p in "${aports[@]}"; do curl -s -o /dev/null "http://127.0.0.1:$p/metrics"; done
  curl -s -o /dev/null "http://127.0.0.1:$ne_port/metrics"
}

for _ in 1 2 3 4 5; do scrape || true; sleep 1; done   # warm-up: all have run a few cycles
# Per sample: wall seconds, then the ticks each process used (agents in order, node_exporter last).
samples="$tmp/samples"; : >"$samples"
per=$(( (DURATION + SAMPLES - 1) / SAMPLES ))
for _ in $(seq "$SAMPLES"); do
  before=(); for p in "${apids[@]}" "$ne"; do before+=("$(ticks "$p")"); done; s0=$(date +%s.%N)
  for _ in $(seq "$per"); do scrape; sleep 1; done
  line="$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$s0" "$(date +%s.%N)")"
  i=0; for p in "${apids[@]}" "$ne"; do line+=" $(( $(ticks "$p") - ${before[$i]} ))"; i=$((i + 1)); done
  echo "$line" >>"$samples"
done
hz=$(getconf CLK_TCK)
pods_seen=$(curl -s "http://127.0.0.1:$agent_port/metrics" | awk '$1=="selfheal_agent_pods" {print $2}')
if [ "$MODELS" = 1 ]; then
  echo "models in use: $(curl -s "http://127.0.0.1:$agent_port/metrics" | grep -c '^selfheal_agent_model_info{') families"
  grep -h 'ModelRefused' "$tmp/agent-agent.log" | head -3 || true
  anon=$(awk '$1=="Anonymous:" {print $2}' "/proc/$agent/smaps_rollup")
  echo "agent anonymous memory: $((anon / 1024)) MiB"
fi
mem=(); for p in "${apids[@]}" "$ne"; do mem+=("$(kib "$p" VmRSS),$(kib "$p" VmHWM)"); done
if [ "$POD_WATCH" = both ]; then
  for i in "${!names[@]}"; do
    echo "${names[$i]}: binary $(stat -c %s "${variants[$i]#* }") bytes, pods seen $(curl -s "http://127.0.0.1:${aports[$i]}/metrics" | awk '$1=="selfheal_agent_pods" {print $2}')"
  done
fi
python3 - "$hz" "$pods_seen" "$samples" "${names[*]}" "${mem[@]}" <<'PY'
import statistics, sys
hz, pods, path, names = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split()
mem = [tuple(int(x) / 1024 for x in m.split(",")) for m in sys.argv[5:]]
rows = [list(map(float, l.split())) for l in open(path) if l.strip()]
wall = sum(r[0] for r in rows)
labels = [("selfheal agent" if n == "agent" else f"agent ({n})") for n in names] + ["prometheus-node-exporter"]
cpu = [[r[1 + i] / hz / r[0] * 100 for r in rows] for i in range(len(labels))]
total = [sum(r[1 + i] for r in rows) / hz / wall * 100 for i in range(len(labels))]
print(f"window {wall:.1f} s at 1 s interval in {len(rows)} sample(s), agent sees {pods} pods")
print(f"{'':28}{'CPU % of a core':>16}{'RSS MiB':>10}{'peak RSS MiB':>14}  per-sample CPU %")
for label, t, (rss, hwm), c in zip(labels, total, mem, cpu):
    print(f"{label:28}{t:>16.3f}{rss:>10.1f}{hwm:>14.1f}  " + " ".join(f"{x:.2f}" for x in c))
ne_cpu, (ne_rss, ne_hwm) = total[-1], mem[-1]
for label, t, (rss, hwm) in zip(labels[:-1], total, mem):
    print(f"{label + ' / node_exporter':28}{t / ne_cpu if ne_cpu else float('nan'):>16.2f}{rss / ne_rss:>10.2f}{hwm / ne_hwm:>14.2f}")
if len(labels) == 3 and len(rows) > 1:
    d = [a - b for a, b in zip(cpu[1], cpu[0])]
    print(f"kube - handwritten CPU per sample: mean {statistics.mean(d):+.3f} %, sd {statistics.stdev(d):.3f}")
PY
