# Multi-stage build: compile in the Rust image, run on a small Debian base as a
# non-root user. The image runs `axnt-oauth serve` on 0.0.0.0:8080; configure it with
# the environment (see README.md): AXNT_BACKEND=aws in production.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates unpinned on purpose: the current one from the base's security updates.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/axnt-oauth --create-home axnt
COPY --from=build /src/target/release/axnt-oauth /usr/local/bin/axnt-oauth
WORKDIR /var/lib/axnt-oauth
COPY config ./config
USER 10001
ENV AXNT_LISTEN_ADDR=0.0.0.0:8080 \
    AXNT_DATA_DIR=/var/lib/axnt-oauth/data \
    AXNT_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/axnt-oauth"]
CMD ["serve"]
