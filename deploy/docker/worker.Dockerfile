# syntax=docker/dockerfile:1
#
# A taskwire worker: the example worker (taskwire-magic-worker) by default. Build from the
# repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t taskwire-magic-worker .
# A worker of your own in this workspace:
#   docker build -f deploy/docker/worker.Dockerfile \
#     --build-arg WORKER_PACKAGE=my-worker --build-arg WORKER_BIN=my-worker -t my-worker .
#
# Whatever its name, the worker binary is installed as /usr/local/bin/worker (the name
# taskwire-worker is the worker runtime's, in worker-runtime.Dockerfile). The image
# also carries the `taskwire` CLI, which the health check runs.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS build
ARG WORKER_PACKAGE=taskwire-examples
ARG WORKER_BIN=taskwire-magic-worker
WORKDIR /src
COPY . .
# Registry, git checkouts and target/ are cache mounts: they survive between builds on the same
# builder but never reach an image layer, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p "${WORKER_PACKAGE}" --bin "${WORKER_BIN}" \
        -p taskwire-cli --bin taskwire \
 && mkdir -p /out \
 && cp "target/release/${WORKER_BIN}" /out/worker \
 && cp target/release/taskwire /out/

# glibc and libgcc only, no shell, no package manager; same Debian release as the builder.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/worker /out/taskwire /usr/local/bin/
# Metrics and health on every interface inside the container; logs as JSON lines.
ENV TASKWIRE_METRICS_ADDR=0.0.0.0:9464 \
    TASKWIRE_LOG=info \
    TASKWIRE_LOG_FORMAT=json
# 9464: HTTP (/metrics, /healthz).
EXPOSE 9464
# SIGTERM drains: no new tasks, running ones get TASKWIRE_GRACE (30s) to finish. Give the
# container longer than that to stop (docker stop -t 45, compose stop_grace_period: 45s).
STOPSIGNAL SIGTERM
# The distroless "nonroot" user, numeric so that runtimes can verify runAsNonRoot.
USER 65532:65532
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/taskwire", "health", "--http", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["/usr/local/bin/worker"]
