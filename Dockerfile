# syntax=docker/dockerfile:1
# The egress-enforcer container image (config/kubernetes/base/daemonset.yaml runs it):
#   docker build -t ghcr.io/egress-enforcer/egress-enforcer:0.1.0 .
# Stage 1 builds with the project's own recipe (`cargo xtask setup --build-only`: nightly
# rust-src and bpf-linker against nightly's LLVM); stage 2 holds the binary and nothing else.

# The stable toolchain the project is tested with, and the nightly that builds the eBPF part.
ARG RUST_VERSION=1.95.0
ARG NIGHTLY=nightly-2026-05-20

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
ARG NIGHTLY
# aya-build asks for the toolchain named "nightly": pin a dated one and link that name to it.
RUN rustup toolchain install "${NIGHTLY}" --profile minimal --component rust-src \
 && rustup toolchain link nightly "$(rustc +"${NIGHTLY}" --print sysroot)"
WORKDIR /src
COPY . .
RUN cargo xtask setup --build-only \
 && cargo build --release --locked --package enforcer --bin egress-enforcer \
 && install -D -m 0755 target/release/egress-enforcer /out/egress-enforcer

# glibc and libgcc, no shell, no package manager: the binary is all there is to run.
FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /out/egress-enforcer /usr/local/bin/egress-enforcer
# Runs as root: the pod's securityContext grants only BPF, PERFMON and NET_ADMIN.
USER 0
ENTRYPOINT ["/usr/local/bin/egress-enforcer"]
CMD ["--config", "/etc/egress-enforcer/config.yaml", "run"]
