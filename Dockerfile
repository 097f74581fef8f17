# KAHN's server in a container: built from this repository, run as a non-root user on a
# minimal image (glibc and CA certificates, no shell, no package manager).
#
#   docker build -t kahn .
#   docker run -p 8080:8080 -v kahn-data:/var/lib/kahn kahn
#   docker run --rm -v kahn-data:/var/lib/kahn kahn tenant provision my-team --db sqlite:///var/lib/kahn/kahn.db
#
# On Postgres, pass the app DSN: -e KAHN_DATABASE_URL=postgres://kahn_app:…@db/kahn.
# Checked by hadolint in scripts/check-packaging.sh (run by scripts/test).

FROM rust:1.94-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kahn-cli --bin kahn \
    && mkdir -p /out/var/lib/kahn \
    && cp target/release/kahn /out/kahn

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kahn /usr/local/bin/kahn
COPY --from=build --chown=65532:65532 /out/var/lib/kahn /var/lib/kahn
ENV KAHN_DATABASE_URL=sqlite:///var/lib/kahn/kahn.db \
    KAHN_LISTEN=0.0.0.0:8080 \
    KAHN_LOG_FORMAT=json
VOLUME ["/var/lib/kahn"]
EXPOSE 8080
USER 65532:65532
# The health check asks the default address; with another KAHN_LISTEN, override it
# (docker run --health-cmd, or a HEALTHCHECK of your own in a derived image).
HEALTHCHECK --interval=30s --timeout=6s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/kahn", "healthcheck", "--url", "http://127.0.0.1:8080"]
ENTRYPOINT ["/usr/local/bin/kahn"]
CMD ["serve"]
