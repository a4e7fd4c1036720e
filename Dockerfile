# nextsync server image: `docker build -t nextsync .` then
#   docker run -d -p 8787:8787 -v nextsync-data:/var/lib/nextsync nextsync
# Build stage: the release binary, from the locked dependency set.
FROM rust:1.94-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin nextsync \
    && strip target/release/nextsync

# Run stage: the binary, CA roots (SMTP, PostgreSQL and Redis over TLS) and curl for the
# health check; a non-root user owning the data volume.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/nextsync --shell /usr/sbin/nologin nextsync \
    && mkdir -p /var/lib/nextsync \
    && chown nextsync:nextsync /var/lib/nextsync \
    && chmod 0700 /var/lib/nextsync
COPY --from=build /src/target/release/nextsync /usr/local/bin/nextsync
USER nextsync
ENV NEXTSYNC_DATA_DIR=/var/lib/nextsync \
    NEXTSYNC_BIND=0.0.0.0:8787
VOLUME ["/var/lib/nextsync"]
EXPOSE 8787
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8787/readyz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["nextsync"]
CMD ["serve"]
