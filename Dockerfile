# Placeholder until the "ship it" issue: a multi-stage build of the sitecache binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sitecache

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sitecache /usr/local/bin/sitecache
USER nonroot
ENTRYPOINT ["/usr/local/bin/sitecache"]
