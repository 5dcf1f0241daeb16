# The schema migration: writes the schema marker into the postgres stand-in
# named by $POSTGRES (host:port), then exits 0.
# Build context: examples/notification/images (scripts/stand-ins.sh fills it).
FROM scratch
COPY stand-ins /stand-ins
STOPSIGNAL SIGKILL
ENTRYPOINT ["/stand-ins", "migrate"]
