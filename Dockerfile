# Multi-stage build: compile with the Rust toolchain, run on a slim Debian with CA certificates.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
RUN cargo build --release --locked --bin tagcast

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 tagcast
COPY --from=build /src/target/release/tagcast /usr/local/bin/tagcast
USER 10001
ENV TAGCAST_METRICS_ADDR=0.0.0.0:9464 TAGCAST_LOG_FORMAT=json
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/tagcast"]
CMD ["run"]
