#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, start cloud-infer and edge-infer on the embedded defaults, send
# real CamVid frames (the daylight validation split, then the dusk drive) to the edge and print what came back.
# Leaves the replay buffer under runs/quickstart/. Ctrl-C stops both services.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

frames=${QUICKSTART_FRAMES:-4}
camvid="$SHARED_DIR/datasets/camvid"
[ -d "$camvid/index" ] || { echo "quickstart: CamVid not found under $camvid (set SHARED_DIR)" >&2; exit 1; }

cargo build --release -p edge-infer -p cloud-infer
mkdir -p runs/quickstart
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

CLOUD_INFER_TOKENS=$token target/release/cloud-infer serve --buffer runs/quickstart/replay-buffer \
    > runs/quickstart/cloud.log 2>&1 &
cloud=$!
# The cloud refines on 2 cores in seconds; the edge waits for it up to this deadline, else answers edge-fallback.
EDGE_CLOUD_URL=http://127.0.0.1:8090 EDGE_CLOUD_TOKEN=$token EDGE_CLOUD_TIMEOUT_MS=${QUICKSTART_DEADLINE_MS:-30000} \
    target/release/edge-infer serve > runs/quickstart/edge.log 2>&1 &
edge=$!
trap 'kill $edge $cloud 2>/dev/null; wait 2>/dev/null' EXIT

wait_ready() {
    for _ in $(seq 1 120); do
        curl -fsS "$1/ready" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "quickstart: $1 did not become ready; see runs/quickstart/*.log" >&2
    exit 1
}
wait_ready http://127.0.0.1:8090
wait_ready http://127.0.0.1:8080
echo "edge and cloud are ready: http://127.0.0.1:8080/docs  http://127.0.0.1:8090/docs"

segment() {
    curl -fsS -X POST -H 'content-type: image/png' --data-binary "@$1" \
        "http://127.0.0.1:8080/v1/segment?collaborate=$2" | python3 scripts/summarise_segment.py "$(basename "$1")"
}
images() { head -n "$frames" "$camvid/index/$1" | awk -v root="$camvid" '{print root "/" $1}'; }
echo "-- daylight frames (the miner decides)"
for f in $(images day-val.txt); do segment "$f" auto; done
echo "-- dusk frames, after the drift (the miner decides)"
for f in $(images dusk-stream.txt); do segment "$f" auto; done
echo "-- one dusk frame refined by the cloud on request"
segment "$(images dusk-eval.txt | tail -n 1)" always
echo "-- replay buffer"
curl -fsS -H "authorization: Bearer $token" http://127.0.0.1:8090/v1/buffer/stats; echo
