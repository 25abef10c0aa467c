# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run on a small Debian base as a
# non-root user with only the binary and config/. The image runs `axnt-oauth serve` on
# 0.0.0.0:8080 (the admin listener with /metrics on 0.0.0.0:9090: publish it to your
# scraper only); configure it with the environment (docs/settings.md):
# AXNT_BACKEND=aws in production.
#
#   docker build -t axnt-oauth .        (BuildKit: Docker 23+ or `docker buildx build`)

# The toolchain the crate is built and tested with (rust-version in Cargo.toml is the
# floor); bookworm to match the runtime stage's glibc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Every manifest target must exist for cargo to read Cargo.toml (benches and examples
# are declared there), so they are copied too; tests/, fuzz/ and docs/ are not needed.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# The registry and target caches survive between builds (BuildKit cache mounts), so a
# source change rebuilds the crate, not its dependencies. The binary is copied out of
# the cached target dir, which is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin axnt-oauth \
    && cp target/release/axnt-oauth /axnt-oauth

FROM debian:bookworm-slim
# ca-certificates unpinned on purpose: the current one from the base's security updates
# (HTTPS to Google and AWS).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/axnt-oauth --create-home axnt
COPY --from=build /axnt-oauth /usr/local/bin/axnt-oauth
WORKDIR /var/lib/axnt-oauth
COPY config ./config
USER 10001:10001
# Logs: JSON lines (the default whenever stderr is not a terminal, stated here anyway).
ENV AXNT_LISTEN_ADDR=0.0.0.0:8080 \
    AXNT_ADMIN_LISTEN_ADDR=0.0.0.0:9090 \
    AXNT_DATA_DIR=/var/lib/axnt-oauth/data \
    AXNT_LOG_FORMAT=json
EXPOSE 8080 9090
# The binary asks its own /healthz on AXNT_LISTEN_ADDR: no curl or shell in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/axnt-oauth", "healthcheck", "--timeout-secs", "3"]
ENTRYPOINT ["/usr/local/bin/axnt-oauth"]
CMD ["serve"]
