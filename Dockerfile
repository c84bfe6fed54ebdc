# Multi-stage build: the release binary built on Debian with the Rust toolchain, then a slim
# Debian runtime with nothing but the binary, a non-root user and a config.
#   docker build -t etls-proxy .
#   docker run -p 8080:8080 -v /path/secrets.env:/etc/etls-proxy/secrets.env:ro etls-proxy
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tools ./tools
RUN cargo build --release --locked --bin etls-proxy

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin etls-proxy \
 && mkdir -p /etc/etls-proxy /run/etls-proxy \
 && chown etls-proxy:etls-proxy /run/etls-proxy
COPY --from=build /src/target/release/etls-proxy /usr/local/bin/etls-proxy
COPY deploy/etls-proxy.yaml /etc/etls-proxy/etls-proxy.yaml
USER etls-proxy
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/etls-proxy"]
CMD ["-c", "/etc/etls-proxy/etls-proxy.yaml"]
