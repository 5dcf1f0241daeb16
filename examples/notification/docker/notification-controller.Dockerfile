# The notification controller. A static binary, nothing else.
# Build context: examples/notification/images (scripts/example.sh fills it).
FROM scratch
COPY notification-controller /notification-controller
ENTRYPOINT ["/notification-controller"]
