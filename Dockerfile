# syntax=docker/dockerfile:1
#
# The operator's container image: built with cargo in a Rust image, shipped on
# distroless (no shell, no package manager), running as the numeric non-root
# user 65532.
#
#   docker build -t cloudimage-operator:0.1.0 .
#
# The tag matches the chart's default (image.repository cloudimage-operator,
# image.tag = the chart's appVersion) and deploy/operator.yaml.
#
# The binary is linked dynamically against glibc. Its runtime needs, from
# `ldd target/release/cloudimage-operator` (Debian 12, glibc 2.36):
#   linux-vdso.so.1                   (the kernel's, not a file)
#   libgcc_s.so.1                     (libgcc-s1: unwinding of panics)
#   libm.so.6, libc.so.6              (libc6)
#   /lib64/ld-linux-x86-64.so.2       (libc6: the dynamic loader)
# plus /etc/ssl/certs/ca-certificates.crt (the clouds' TLS certificates).
# gcr.io/distroless/cc-debian12 has exactly these: glibc, libgcc and the CA
# certificates; its user 65532 is "nonroot". testenv/empty-root-check.sh
# proves the binary starts in a root holding nothing else.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so that a change to src/ does not rebuild them: build
# the dependency graph against stub targets, then the real sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/crdgen.rs \
    && touch src/lib.rs \
    && cargo fetch --locked \
    && cargo build --release --locked --bin cloudimage-operator \
    && rm -rf src
COPY src ./src
# Touch the sources so cargo does not take the stubs' outputs as fresh.
RUN find src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin cloudimage-operator \
    && cp target/release/cloudimage-operator /cloudimage-operator

# Same Debian release (glibc) as the build stage.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cloudimage-operator /usr/local/bin/cloudimage-operator
# Numeric, so that runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# /livez and /readyz (--health-addr), /metrics (--metrics-addr).
EXPOSE 8081 8080
ENTRYPOINT ["/usr/local/bin/cloudimage-operator"]
