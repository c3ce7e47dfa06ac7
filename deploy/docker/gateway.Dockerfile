# syntax=docker/dockerfile:1
#
# taskwire-gateway: the gRPC gateway producers submit to. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t taskwire-gateway .
#
# The image also carries the `taskwire` CLI, which the health check runs.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Registry, git checkouts and target/ are cache mounts: they survive between builds on the same
# builder but never reach an image layer, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p taskwire-gateway --bin taskwire-gateway \
        -p taskwire-cli --bin taskwire \
 && mkdir -p /out \
 && cp target/release/taskwire-gateway target/release/taskwire /out/

# glibc and libgcc only, no shell, no package manager; same Debian release as the builder.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/taskwire-gateway /out/taskwire /usr/local/bin/
# Listen on every interface inside the container (the binaries default to 127.0.0.1); logs as
# JSON lines for the cluster's log collector.
ENV TASKWIRE_GATEWAY_ADDR=0.0.0.0:50051 \
    TASKWIRE_HTTP_ADDR=0.0.0.0:8080 \
    TASKWIRE_LOG=info \
    TASKWIRE_LOG_FORMAT=json
# 50051: gRPC (tasks, Admin API, grpc.health.v1). 8080: HTTP (/metrics, /healthz, dashboard).
EXPOSE 50051 8080
# The distroless "nonroot" user, numeric so that runtimes can verify runAsNonRoot.
USER 65532:65532
# grpc.health.v1 on the gRPC port. With TLS on that port (TASKWIRE_TLS_CERT), check the HTTP port
# instead: taskwire health --http http://127.0.0.1:8080/healthz
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/taskwire", "health", "--grpc", "127.0.0.1:50051"]
ENTRYPOINT ["/usr/local/bin/taskwire-gateway"]
