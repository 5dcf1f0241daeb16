# The DataStorage stand-in: an HTTP API on port 8080 backed by the postgres
# and redis stand-ins named by $POSTGRES and $REDIS (host:port). It refuses to
# start until the migration has run.
# Build context: examples/notification/images (scripts/stand-ins.sh fills it).
FROM scratch
COPY stand-ins /stand-ins
EXPOSE 8080
STOPSIGNAL SIGKILL
ENTRYPOINT ["/stand-ins", "datastorage"]
CMD ["--port", "8080"]
