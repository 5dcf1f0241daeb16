# The schema migrations: applies every SQL file of $MIGRATIONS (a folder of
# the context) that the database named by $DATABASE_URL lacks, then exits.
# Build context: examples/notification (its .dockerignore lets in only the
# DataStorage binary, the C libraries it links and the SQL files).
FROM scratch
ARG MIGRATIONS=migrations
COPY images/libraries/ /
COPY images/datastorage /datastorage
COPY ${MIGRATIONS} /migrations
ENTRYPOINT ["/datastorage", "migrate"]
