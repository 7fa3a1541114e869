# tally: build with the Rust toolchain, run as a non-root user on slim Debian.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY migrations migrations
RUN cargo build --release --locked --bin tally && strip target/release/tally

FROM debian:bookworm-slim
# ca-certificates: provider APIs are HTTPS; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/tally tally
COPY --from=build /src/target/release/tally /usr/local/bin/tally
USER tally
WORKDIR /var/lib/tally
# Config by file (mount one and set TALLY_CONFIG) or by TALLY__SECTION__KEY variables.
# Listening beyond loopback needs API keys in [auth], or auth.allow_anonymous = true.
ENV TALLY__SERVER__LISTEN=0.0.0.0:8080 \
    TALLY__STORE__URL=sqlite:///var/lib/tally/tally.db \
    TALLY_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["tally"]
CMD ["serve"]
