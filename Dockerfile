# syntax=docker/dockerfile:1.7
# The sitecache image: one static-enough binary (controller and agent) on distroless, non-root,
# fine with a read-only root filesystem (it writes only to the volumes it is given).

FROM rust:1.95-bookworm AS build
# cmake builds aws-lc-sys; the C compiler the image has builds zstd.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.* \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sitecache --bin sitecache \
 && install -D -m 0755 target/release/sitecache /out/sitecache

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sitecache /usr/local/bin/sitecache
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sitecache"]
CMD ["controller"]
