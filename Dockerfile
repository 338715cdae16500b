# syntax=docker/dockerfile:1
# The one `selfheal` binary (agent, aggregator, heal API, trainer) on a minimal non-root base.
#
#   docker build -t ghcr.io/selfheal/selfheal:0.1.0 .
#
# Build: the `dist` profile (fat LTO, one codegen unit, debuginfo stripped: Cargo.toml), with
# the lock file as committed. About 20 minutes on 2 cores from cold; the cache mounts keep the
# registry and the target directory between builds.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile dist --bin selfheal \
 && install -D -m 0755 target/dist/selfheal /out/selfheal

# Runtime: distroless cc (glibc, libgcc and CA certificates; no shell, no package manager),
# Debian 12 like the build stage, so the binary's glibc matches. `nonroot` runs as 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
# The agent DaemonSet's spool-owner init container hands its hostPath spool to the agent's user
# with `/bin/chown` (daemonset/agent/daemonset.yaml); distroless has no coreutils, so this one
# tool comes from the build stage (same Debian release; it links only glibc).
COPY --from=build /bin/chown /bin/chown
COPY --from=build /out/selfheal /usr/local/bin/selfheal
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/selfheal"]
