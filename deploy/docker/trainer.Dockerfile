# syntax=docker/dockerfile:1
# The retraining job: `trainer retrain ...` (libtorch) plus `cloud-infer export-index` to snapshot the replay buffer
# it trains on. Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t trainer:dev .
# The only image with libtorch: edge-infer and cloud-infer never link it.

# libtorch and the ONNX Runtime library come from their PyPI wheels. --no-deps: Rust needs libtorch and the CUDA
# runtime it links, not the gigabytes of CUDA wheels Python would pull (same set as scripts/setup.sh).
FROM python:3.11-slim-bookworm AS pylibs
RUN pip install --no-cache-dir --no-deps --target /opt/pylibs \
        torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 \
    && pip install --no-cache-dir --target /opt/ort-wheel onnxruntime==1.31.1 \
    && mkdir -p /opt/onnxruntime/lib \
    && cp /opt/ort-wheel/onnxruntime/capi/libonnxruntime.so.1.31.1 /opt/onnxruntime/lib/

FROM rust:1.95-slim-bookworm AS builder
# torch-sys compiles C++ against the libtorch headers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
COPY --from=pylibs /opt/pylibs /opt/pylibs
# trainer/build.rs bakes an rpath to $LIBTORCH/lib: the runtime stage keeps libtorch at this same path.
ENV LIBTORCH=/opt/pylibs/torch \
    LIBTORCH_BYPASS_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p trainer -p cloud-infer \
    && install -D target/release/trainer /out/trainer \
    && install -D target/release/cloud-infer /out/cloud-infer

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 /work
COPY --from=pylibs /opt/pylibs /opt/pylibs
COPY --from=pylibs /opt/onnxruntime/lib/ /opt/onnxruntime/lib/
COPY --from=builder /out/trainer /out/cloud-infer /usr/local/bin/
# The seed model the registry starts from when it is empty.
COPY models/edge/current/ /opt/trainer/models/edge/current/
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.1.31.1 \
    ORT_DISABLE_TELEMETRY=1 \
    LIBTORCH=/opt/pylibs/torch \
    MODELS_DIR=/opt/trainer/models \
    RETRAIN_SEED_MODEL=/opt/trainer/models/edge/current
WORKDIR /work
USER 10001:10001
# A batch job: no port, no HEALTHCHECK (Kubernetes judges it by its exit status).
ENTRYPOINT ["/usr/local/bin/trainer"]
CMD ["retrain", "status"]
