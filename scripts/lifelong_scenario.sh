#!/usr/bin/env bash
# The lifelong scenario through the real pipeline: the day-trained edge model meets the dusk stream
# (dusk-stream.txt, in time order) through edge-infer -> miner -> cloud-infer (MobileSAM refinement) -> replay
# buffer; the buffer is exported and one retraining round fine-tunes on the CLOUD's labels plus day rehearsal,
# gated on day-val (old task) and the held-back buffer + dusk-eval (new task). Writes everything under
# runs/lifelong-<time>/ and prints the accuracy matrix, BWT/FWT and the transfer ratio (scripts/lifelong_report.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
camvid="$SHARED_DIR/datasets/camvid"
out=runs/lifelong-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
cargo build --release -p edge-infer -p cloud-infer -p trainer
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

CLOUD_INFER_TOKENS=$token target/release/cloud-infer serve --listen 127.0.0.1:18090 --buffer "$out/buffer" \
    > "$out/cloud.log" 2>&1 &
cloud=$!
EDGE_CLOUD_URL=http://127.0.0.1:18090 EDGE_CLOUD_TOKEN=$token EDGE_CLOUD_TIMEOUT_MS=60000 \
    target/release/edge-infer serve --listen 127.0.0.1:18080 --model-dir models/edge/current > "$out/edge.log" 2>&1 &
edge=$!
trap 'kill $edge $cloud 2>/dev/null; wait 2>/dev/null' EXIT
for url in http://127.0.0.1:18090 http://127.0.0.1:18080; do
    for _ in $(seq 1 120); do curl -fsS "$url/ready" >/dev/null 2>&1 && break; sleep 0.5; done
done

echo "round 0: streaming dusk-stream through the edge (the miner decides what goes to the cloud)"
while read -r image _; do
    curl -fsS -X POST -H 'content-type: image/png' --data-binary "@$camvid/$image" \
        "http://127.0.0.1:18080/v1/segment?collaborate=auto&domain=dusk" |
        python3 scripts/summarise_segment.py "$(basename "$image")" | tee -a "$out/stream.txt"
done < "$camvid/index/dusk-stream.txt"
kill $edge $cloud; wait 2>/dev/null || true
trap - EXIT

target/release/cloud-infer export-index --buffer "$out/buffer" --out "$out/export"
target/release/trainer retrain run --registry "$out/registry" --seed-model models/edge/current \
    --buffer-export "$out/export" --runs-dir "$out/retrain" \
    --rehearsal-index "$camvid/index/day-train.txt" --old-task-index "$camvid/index/day-val.txt" \
    --new-task-labelled-index "$camvid/index/dusk-eval.txt" "$@" 2>&1 | tee "$out/retrain.log"
python3 scripts/lifelong_report.py "$out" | tee "$out/REPORT.md"
