# One image with every binary of the workspace; compose.yaml picks the
# command per service.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/command-api /src/target/release/projector /src/target/release/query-api /src/target/release/research-verify /src/target/release/mint-token /src/target/release/research-load /usr/local/bin/
COPY data /usr/share/research-records/data
ENV RESEARCH_DATA_DIR=/usr/share/research-records/data
# mimalloc gives freed memory back at once (docs/operations.md, "Memory").
ENV MIMALLOC_PURGE_DELAY=0
USER nobody
