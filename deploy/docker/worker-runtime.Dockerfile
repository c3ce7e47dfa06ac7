# syntax=docker/dockerfile:1
#
# taskwire-worker: the worker runtime alone, for workers written in any language. It serves the
# task services of an upstream gRPC server (the worker's own container, a plain gRPC server of
# its task contract) by calling it for each attempt. Build from the repository root:
#   docker build -f deploy/docker/worker-runtime.Dockerfile -t taskwire-worker .
#
# Run it beside the worker's server, e.g. as the sidecar of deploy/k8s/components/worker-sidecar:
#   taskwire-worker --upstream unix:///run/taskwire/upstream.sock   (or TASKWIRE_UPSTREAM)

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Registry, git checkouts and target/ are cache mounts: they survive between builds on the same
# builder but never reach an image layer, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p taskwire-worker --bin taskwire-worker \
 && mkdir -p /out \
 && cp target/release/taskwire-worker /out/

# glibc and libgcc only, no shell, no package manager; same Debian release as the builder.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/taskwire-worker /usr/local/bin/
# Metrics and health on every interface inside the container; logs as JSON lines. The upstream
# (TASKWIRE_UPSTREAM or --upstream) has no default: say where the worker's server listens.
ENV TASKWIRE_METRICS_ADDR=0.0.0.0:9464 \
    TASKWIRE_LOG=info \
    TASKWIRE_LOG_FORMAT=json
# 9464: HTTP (/metrics; /healthz, 503 while the upstream does not answer its health check).
EXPOSE 9464
# SIGTERM drains: no new tasks, running ones get TASKWIRE_GRACE (30s) to finish while the
# upstream keeps answering. Give the container longer than that to stop (docker stop -t 45).
STOPSIGNAL SIGTERM
# The distroless "nonroot" user, numeric so that runtimes can verify runAsNonRoot. It must be
# allowed to connect to the upstream's socket (same UID or group as the server's process).
USER 65532:65532
# No HEALTHCHECK: the image holds the runtime alone, nothing that could run one. Probe
# http://<container>:9464/healthz from outside (Kubernetes: an httpGet probe).
ENTRYPOINT ["/usr/local/bin/taskwire-worker"]
