# The notification controller. Its binary and the C libraries it links,
# nothing else.
# Build context: examples/notification/images (scripts/example.sh fills it).
FROM scratch
COPY libraries/ /
COPY notification-controller /notification-controller
ENTRYPOINT ["/notification-controller"]
