# syntax=docker/dockerfile:1
# cloud-infer: MobileSAM refinement and the replay buffer. Build from the repository root:
#   docker build -f deploy/docker/cloud-infer.Dockerfile -t cloud-infer:dev .
# Runs as an unprivileged user on 0.0.0.0:8090. It refuses to start without CLOUD_INFER_TOKENS (or the explicit
# CLOUD_INFER_INSECURE_NO_AUTH=true). The buffer defaults to /var/lib/cloud-infer/replay-buffer (a volume); set
# CLOUD_INFER_BUFFER=s3://bucket/prefix with AWS_* variables to share it between replicas.

FROM python:3.11-slim-bookworm AS onnxruntime
RUN pip install --no-cache-dir --target /opt/ort-wheel onnxruntime==1.31.1 \
    && mkdir -p /opt/onnxruntime/lib \
    && cp /opt/ort-wheel/onnxruntime/capi/libonnxruntime.so.1.31.1 /opt/onnxruntime/lib/

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cloud-infer \
    && install -D target/release/cloud-infer /out/cloud-infer

FROM debian:bookworm-slim AS runtime
# ca-certificates: the S3 client speaks TLS; curl serves the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 /var/lib/cloud-infer
COPY --from=onnxruntime /opt/onnxruntime/lib/ /opt/onnxruntime/lib/
COPY --from=builder /out/cloud-infer /usr/local/bin/cloud-infer
COPY models/mobilesam/ /opt/cloud-infer/models/mobilesam/
COPY models/cloud-head/ /opt/cloud-infer/models/cloud-head/
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.1.31.1 \
    ORT_DISABLE_TELEMETRY=1 \
    MODELS_DIR=/opt/cloud-infer/models \
    CLOUD_INFER_SAM_DIR=/opt/cloud-infer/models/mobilesam \
    CLOUD_INFER_SEMANTIC_HEAD=/opt/cloud-infer/models/cloud-head \
    CLOUD_INFER_LISTEN=0.0.0.0:8090 \
    CLOUD_INFER_BUFFER=/var/lib/cloud-infer/replay-buffer
VOLUME ["/var/lib/cloud-infer"]
USER 10001:10001
EXPOSE 8090
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS http://127.0.0.1:8090/health || exit 1"]
ENTRYPOINT ["/usr/local/bin/cloud-infer"]
CMD ["serve"]
