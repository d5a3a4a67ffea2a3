# syntax=docker/dockerfile:1
# mlmodel-operator image: one binary that is the operator (`run`) and the model downloader
# (`download`, what the download Jobs run), on distroless (glibc, CA certificates, no shell).
#
#   docker build -t mlmodel-operator:0.1.0 .

FROM rust:1.95-bookworm AS build
# aws-lc-sys (the TLS backend) compiles its C sources with cc; cmake is its fallback builder.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies in their own layer, rebuilt only when the manifest or the lock file change:
# build once with stub sources. benches/ is copied because Cargo.toml declares a bench target.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin mlmodel-operator \
    && rm -rf src

# The real sources. COPY keeps their mtimes, which may be older than the stub build's: touch
# them so cargo rebuilds the crate. Same command as `make build`.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin mlmodel-operator \
    && cp target/release/mlmodel-operator /mlmodel-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /mlmodel-operator /usr/local/bin/mlmodel-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mlmodel-operator"]
CMD ["run"]
