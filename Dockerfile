# sidecar-init as an image: one static binary in an empty filesystem.
#
#   docker build -t sidecar-init .
#
# Run it as the entrypoint of an image of its own, or copy it into yours:
#
#   COPY --from=sidecar-init /sidecar-init /sidecar-init
#   ENTRYPOINT ["/sidecar-init"]
#
# The build stage runs scripts/build-static, which builds for musl and fails
# unless the binary is static; the final stage holds /sidecar-init only.
# Plain stages and instructions: BuildKit and the legacy builder both build
# it. To package a binary built on the host instead (nothing to pull), see
# docker/prebuilt.Dockerfile.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-alpine AS build
# bash runs the script, binutils (readelf) checks the result, musl-dev links.
RUN apk add --no-cache bash binutils musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY scripts/build-static ./scripts/build-static
# The script prints the binary's path last on stdout (cargo talks on stderr).
RUN bin=$(bash scripts/build-static --musl) \
    && cp "$(printf '%s\n' "$bin" | tail -n 1)" /sidecar-init \
    && /sidecar-init --version

FROM scratch
LABEL org.opencontainers.image.title="sidecar-init" \
      org.opencontainers.image.description="A small PID 1 for containers that run several daemons side by side" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /sidecar-init /sidecar-init
ENTRYPOINT ["/sidecar-init"]
