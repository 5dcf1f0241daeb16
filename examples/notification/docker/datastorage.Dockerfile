# DataStorage: the audit events API on port 8080, over PostgreSQL
# ($DATABASE_URL) and Redis ($REDIS). Its binary and the C libraries it
# links, nothing else.
# Build context: examples/notification/images (scripts/example.sh fills it).
FROM scratch
COPY libraries/ /
COPY datastorage /datastorage
EXPOSE 8080
ENTRYPOINT ["/datastorage", "serve"]
