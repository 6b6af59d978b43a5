# A scratch image around a sidecar-init binary built on the host with
# scripts/build-static: for machines that build offline, where the rust
# image of ../Dockerfile cannot be pulled (FROM scratch pulls nothing).
# The build context is a directory holding the binary as `sidecar-init`:
#
#   ctx=$(mktemp -d)
#   cp "$(scripts/build-static | tail -n 1)" "$ctx/sidecar-init"
#   docker build -f docker/prebuilt.Dockerfile -t sidecar-init "$ctx"
#
# tests/container.rs builds its test images on top of this one.
FROM scratch
COPY sidecar-init /sidecar-init
ENTRYPOINT ["/sidecar-init"]
