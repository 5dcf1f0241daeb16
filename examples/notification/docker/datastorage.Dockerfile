# DataStorage: the audit events API on port 8080, over PostgreSQL
# ($DATABASE_URL) and Redis ($REDIS). A static binary, nothing else.
# Build context: examples/notification/images (scripts/example.sh fills it).
FROM scratch
COPY datastorage /datastorage
EXPOSE 8080
ENTRYPOINT ["/datastorage", "serve"]
