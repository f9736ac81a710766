# syntax=docker/dockerfile:1
#
# fusebox container image: a locked release build on Debian bookworm, run on distroless
# (glibc, libgcc and CA certificates; no shell, no package manager) as uid 65532.
#
#   docker build -t fusebox:local .
#   docker run --rm --read-only -p 127.0.0.1:8080:8080 -p 127.0.0.1:9901:9901 \
#     -v "$PWD/my-config:/etc/fusebox:ro" -e FUSEBOX_ADMIN_TOKEN=change-me fusebox:local
#
# Mount a directory holding fusebox.toml over /etc/fusebox (a directory, so hot reload
# sees editors' renames; in Kubernetes a ConfigMap without subPath). A container's admin
# listener must bind 0.0.0.0 to be reachable, which needs [admin] token_env. The shipped
# /etc/fusebox/fusebox.toml is config/fusebox.toml (the documented example; its admin
# listener is on loopback). docker/docker-compose.yml runs a complete demo.
#
# The image works with a read-only root filesystem: fusebox writes no files (logs go to
# stdout). It runs as PID 1 and handles SIGTERM itself: readiness turns 503, in-flight
# requests drain for up to [listener] shutdown_timeout, and it exits 0.
# tests/deploy/check.sh asserts that the build command below is the one CI runs.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# make: the jemalloc allocator (the default feature) is built from C with it.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
# The repository less .dockerignore's entries (target/, .git, docker/ ...).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/fusebox /out/fusebox

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/fusebox /usr/local/bin/fusebox
COPY config/fusebox.toml /etc/fusebox/fusebox.toml
ENV FUSEBOX_CONFIG=/etc/fusebox/fusebox.toml
# 65532 is distroless's "nonroot"; numeric so Kubernetes runAsNonRoot can verify it.
USER 65532:65532
# 8080: data port (the application's calls); 9901: admin (metrics, breakers, probes).
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/fusebox"]
CMD ["run"]
