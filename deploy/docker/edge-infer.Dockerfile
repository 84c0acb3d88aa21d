# syntax=docker/dockerfile:1
# edge-infer: the robot's segmentation API. Build from the repository root:
#   docker build -f deploy/docker/edge-infer.Dockerfile -t edge-infer:dev .
# Runs as an unprivileged user on 0.0.0.0:8080 with the shipped edge model; for hot updates set
# EDGE_MODEL_REGISTRY_URL to the object-store registry (or mount a registry directory and set
# EDGE_MODEL_DIR=<registry>/current; docs/deployment.md).

# ONNX Runtime comes from its PyPI wheel: the shared library is all we keep (`ort` loads it at run time).
FROM python:3.11-slim-bookworm AS onnxruntime
RUN pip install --no-cache-dir --target /opt/ort-wheel onnxruntime==1.31.1 \
    && mkdir -p /opt/onnxruntime/lib \
    && cp /opt/ort-wheel/onnxruntime/capi/libonnxruntime.so.1.31.1 /opt/onnxruntime/lib/

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build tree between builds; the binary is copied out of the cached target.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p edge-infer \
    && install -D target/release/edge-infer /out/edge-infer

FROM debian:bookworm-slim AS runtime
# curl serves the HEALTHCHECK; ca-certificates lets the edge reach an https:// cloud.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY --from=onnxruntime /opt/onnxruntime/lib/ /opt/onnxruntime/lib/
COPY --from=builder /out/edge-infer /usr/local/bin/edge-infer
COPY models/edge/current/ /opt/edge-infer/models/edge/current/
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.1.31.1 \
    ORT_DISABLE_TELEMETRY=1 \
    MODELS_DIR=/opt/edge-infer/models \
    EDGE_MODEL_DIR=/opt/edge-infer/models/edge/current \
    EDGE_LISTEN=0.0.0.0:8080
# Numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS http://127.0.0.1:8080/health || exit 1"]
ENTRYPOINT ["/usr/local/bin/edge-infer"]
CMD ["serve"]
