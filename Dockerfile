# image-server in a container (Debian 12, like the development machines).
#
#   docker build -t image-server .
#   docker run --rm -p 8000:8000 -v image-server-data:/var/lib/image-server/data image-server
#
# The first stage builds the release binary with the project's own steps
# (scripts/install-deps, then `make build`); the second holds only the
# binary and the shared libraries it needs. The default command is the
# single-machine `serve` (SQLite + blob folder under /var/lib/image-server/data);
# docker-compose.yml shows the PostgreSQL fleet (migrate, api, worker).

FROM debian:12 AS build
WORKDIR /src
# The packages first, so that a source change does not reinstall them.
COPY scripts/install-deps scripts/install-deps
RUN scripts/install-deps
COPY . .
RUN make build && build/image-server --version

FROM debian:12-slim
# The runtime halves of the -dev packages scripts/install-deps installs.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libvips42 libmicrohttpd12 libsqlite3-0 libpq5 libjansson4 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --user-group --home-dir /var/lib/image-server --create-home image-server \
 && install -d -o image-server -g image-server /var/lib/image-server/data
COPY --from=build /src/build/image-server /usr/local/bin/image-server
USER image-server
WORKDIR /var/lib/image-server
VOLUME /var/lib/image-server/data
# 8000: the API (serve, api); 8001: a worker's /healthz and /metrics.
EXPOSE 8000 8001
# SIGTERM (docker stop) is the graceful stop of every subcommand.
STOPSIGNAL SIGTERM
ENTRYPOINT ["image-server"]
CMD ["serve", "--listen", "0.0.0.0:8000"]
