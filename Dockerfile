# syntax=docker/dockerfile:1
# switchboard: multi-stage build. The build stage compiles the host and its bundled wasm plugins
# (which need the wasm32-wasip2 target); the runtime stage is a slim Debian with the one binary,
# running as an unprivileged user.
#
#   docker build -t switchboard .
#   docker run --rm -p 8080:8080 -e SWITCHBOARD_SERVER__ADMIN_TOKEN=… -v sb-data:/var/lib/switchboard switchboard
#
# deploy/compose.yaml runs it beside PostgreSQL.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# The bundled plugins are compiled for this target by host/build.rs.
RUN rustup target add wasm32-wasip2
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchboard \
    && install -m 0755 target/release/switchboard /usr/local/bin/switchboard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/switchboard --create-home \
       --shell /usr/sbin/nologin switchboard
COPY --from=build /usr/local/bin/switchboard /usr/local/bin/switchboard
USER switchboard
# The working directory holds the SQLite database, the secrets key file and the plugin artifact
# cache (`.switchboard/`) unless the config points elsewhere: keep it on a volume.
WORKDIR /var/lib/switchboard
VOLUME ["/var/lib/switchboard"]
ENV SWITCHBOARD_SERVER__LISTEN=0.0.0.0:8080 \
    SWITCHBOARD_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve"]
