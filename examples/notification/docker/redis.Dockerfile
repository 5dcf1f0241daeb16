# The redis stand-in: a line-protocol store (PING, SET, GET) on port 6379.
# Build context: examples/notification/images (scripts/stand-ins.sh fills it).
FROM scratch
COPY stand-ins /stand-ins
EXPOSE 6379
# PID 1 without a signal handler ignores SIGTERM; nothing here needs a
# graceful stop, so let the engine kill it at once.
STOPSIGNAL SIGKILL
ENTRYPOINT ["/stand-ins", "redis"]
CMD ["--port", "6379"]
