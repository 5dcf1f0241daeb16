//! The notification suite: every test talks to one stack, set up once per
//! run: DataStorage on a real PostgreSQL 15 and Redis 7, its schema applied
//! by the migrate component, and on Kubernetes the notification controller
//! too. Run `scripts/example.sh` first (the base image and the binaries the
//! images hold), then `cargo test -p notification-e2e --features e2e`.
//!
//! With `E2E_INFRA_BACKEND=kubernetes` (and a way for images to reach the
//! cluster, see docs/kubernetes.md) it runs on Kubernetes; the variable is
//! read at build time as well, since only there the suite needs the
//! controller (build.rs).

#[cfg_attr(
    e2e_kubernetes,
    e2e_infra::e2e_infra(consumer = "notification", needs = ["datastorage", "notification-controller"])
)]
#[cfg_attr(not(e2e_kubernetes), e2e_infra::e2e_infra(consumer = "notification", needs = ["datastorage"]))]
mod notification_e2e {
    use std::time::{SystemTime, UNIX_EPOCH};

    use e2e_infra::record::Placement;
    use e2e_infra::Infra;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    use notification_client::request;
    use serde_json::{json, Value};

    /// What the catalog gives postgres (its `env`, and the manifest's).
    const DATABASE: &str = "user=datastorage password=datastorage dbname=audit";

    fn datastorage(infra: &Infra) -> std::net::SocketAddr {
        infra.endpoint("datastorage", 8080).expect("datastorage publishes 8080").addr()
    }

    /// A notification id no other test or run uses.
    fn unique(what: &str) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
        format!("{what}-{}-{nanos}", std::process::id())
    }

    fn post_event(infra: &Infra, notification_id: &str, payload: &Value) -> (u16, Value) {
        let body = json!({ "notification_id": notification_id, "payload": payload }).to_string();
        let answer = request(datastorage(infra), "POST", "/events", &body).expect("POST /events");
        (answer.status, serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.body)))
    }

    /// A SQL connection to the stack's PostgreSQL, through the handle's endpoint.
    async fn postgres(infra: &Infra) -> tokio_postgres::Client {
        let endpoint = infra.endpoint("postgres", 5432).expect("postgres publishes 5432");
        let config = format!("host={} port={} {DATABASE}", endpoint.host(), endpoint.port());
        let (client, connection) =
            tokio_postgres::connect(&config, tokio_postgres::NoTls).await.expect("connect to postgres");
        tokio::spawn(connection);
        client
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[test]
    fn datastorage_is_up_and_ready(infra: &Infra) {
        for path in ["/healthz", "/readyz"] {
            let answer = request(datastorage(infra), "GET", path, "").expect(path);
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        }
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[test]
    fn an_event_is_stored_and_read_back(infra: &Infra) {
        let id = unique("read-back");
        let payload = json!({ "to": "oncall", "channel": "email", "message": "disk full" });
        let (status, stored) = post_event(infra, &id, &payload);
        assert_eq!(status, 201, "{stored}");
        assert_eq!((stored["notification_id"].as_str(), &stored["payload"]), (Some(id.as_str()), &payload));

        let read = request(datastorage(infra), "GET", &format!("/events/{id}"), "").expect("GET /events/<id>");
        assert_eq!(read.status, 200, "{}", read.body);
        let read: Value = serde_json::from_str(&read.body).expect("JSON");
        assert_eq!(
            (&read["id"], &read["payload"], &read["event_type"]),
            (&stored["id"], &payload, &json!("notification.sent"))
        );

        let missing = request(datastorage(infra), "GET", &format!("/events/{id}-not-sent"), "").expect("GET");
        assert_eq!(missing.status, 404, "{}", missing.body);
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[tokio::test]
    async fn a_duplicate_is_deduplicated_by_redis(infra: &Infra) {
        let id = unique("duplicate");
        let (first, stored) = post_event(infra, &id, &json!({ "attempt": 1 }));
        assert_eq!(first, 201, "{stored}");
        let (again, duplicate) = post_event(infra, &id, &json!({ "attempt": 2 }));
        assert_eq!(again, 200, "{duplicate}");
        assert_eq!(
            (&duplicate["duplicate"], &duplicate["deduplicated_by"]),
            (&json!(true), &json!("redis")),
            "{duplicate}"
        );

        // One row, the first attempt's.
        let rows = postgres(infra)
            .await
            .query("SELECT payload FROM audit_events WHERE notification_id = $1", &[&id])
            .await
            .expect("query");
        let payloads: Vec<Value> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(payloads, [json!({ "attempt": 1 })]);
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[tokio::test]
    async fn the_event_is_a_row_in_postgres(infra: &Infra) {
        let id = unique("row");
        let (status, stored) = post_event(infra, &id, &json!({ "to": "team-db" }));
        assert_eq!(status, 201, "{stored}");

        let client = postgres(infra).await;
        let row = client
            .query_one("SELECT id, payload, event_type FROM audit_events WHERE notification_id = $1", &[&id])
            .await
            .expect("the row");
        let (row_id, payload, event_type): (i64, Value, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (json!(row_id), payload, event_type),
            (stored["id"].clone(), json!({ "to": "team-db" }), "notification.sent".to_owned())
        );
        // Both migrations were applied, once each.
        let versions: Vec<i32> = client
            .query("SELECT version FROM schema_migrations ORDER BY version", &[])
            .await
            .expect("query")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, [1, 2]);
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[test]
    fn every_image_carries_the_run_tag(infra: &Infra) {
        for component in infra.plan().components() {
            let image = infra.image(&component.name).expect("planned");
            // `localhost/…` when loaded into the node; the registry's
            // name, pinned to the pushed digest, when pulled from one.
            assert_eq!(image.repository(), component.name, "{image}");
            assert_eq!(image.tag(), Some(infra.tag().as_str()), "{image}");
        }
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[tokio::test]
    async fn what_runs_is_what_was_built(infra: &Infra) {
        let planned = infra.image("datastorage").expect("planned");
        let running: Vec<String> = match infra.placement() {
            Placement::Docker { .. } => {
                let docker = infra.docker().await.expect("docker client");
                let name = format!("{}-datastorage", infra.namespace());
                let container = docker.inspect_container(&name, None).await.expect("inspect datastorage");
                container.config.and_then(|c| c.image).into_iter().collect()
            }
            _ => {
                let pods: Api<Pod> =
                    Api::namespaced(infra.kube().await.expect("kube client"), infra.namespace().as_str());
                let listed = pods.list(&ListParams::default().labels("app=datastorage")).await.expect("list pods");
                listed
                    .items
                    .into_iter()
                    .flat_map(|p| p.spec.map(|s| s.containers).unwrap_or_default())
                    .filter_map(|c| c.image)
                    .collect()
            }
        };
        assert!(!running.is_empty() && running.iter().all(|image| planned.matches(image)), "{running:?}");
    }

    /// The `NotificationRequest`s of the run's namespace.
    #[cfg(e2e_kubernetes)]
    async fn notification_requests(infra: &Infra) -> Api<kube::api::DynamicObject> {
        use kube::core::{ApiResource, GroupVersionKind};
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("notification.e2e-infra.io", "v1alpha1", "NotificationRequest"),
            "notificationrequests",
        );
        Api::namespaced_with(infra.kube().await.expect("kube client"), infra.namespace().as_str(), &resource)
    }

    /// Creates a request and waits until the controller has decided it.
    #[cfg(e2e_kubernetes)]
    async fn decided(infra: &Infra, name: &str, spec: Value) -> Value {
        let requests = notification_requests(infra).await;
        let object = serde_json::from_value(json!({
            "apiVersion": "notification.e2e-infra.io/v1alpha1",
            "kind": "NotificationRequest",
            "metadata": { "name": name },
            "spec": spec,
        }))
        .expect("a NotificationRequest");
        requests.create(&kube::api::PostParams::default(), &object).await.expect("create the NotificationRequest");
        let has_phase =
            |o: Option<&kube::api::DynamicObject>| o.is_some_and(|o| o.data.pointer("/status/phase").is_some());
        let waiting = kube::runtime::wait::await_condition(requests, name, has_phase);
        let decided = tokio::time::timeout(std::time::Duration::from_secs(60), waiting)
            .await
            .unwrap_or_else(|_| panic!("NotificationRequest {name} got no status within 60 s"))
            .expect("watch the NotificationRequest")
            .expect("the NotificationRequest is there");
        decided.data["status"].clone()
    }

    // The controller runs on Kubernetes only: these tests exist in a build
    // with E2E_INFRA_BACKEND=kubernetes (see build.rs).
    #[cfg(e2e_kubernetes)]
    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[tokio::test]
    async fn a_notification_request_is_sent_and_audited(infra: &Infra) {
        let status = decided(
            infra,
            "disk-full",
            json!({ "recipient": "oncall", "channel": "pagerduty", "message": "disk full" }),
        )
        .await;
        assert_eq!(status["phase"], "Sent", "{status}");
        let id = status["notificationId"].as_str().expect("the audit event's notification id");

        let event = request(datastorage(infra), "GET", &format!("/events/{id}"), "").expect("GET /events/<id>");
        assert_eq!(event.status, 200, "{}", event.body);
        let event: Value = serde_json::from_str(&event.body).expect("JSON");
        assert_eq!(
            event["payload"],
            json!({ "request": "disk-full", "recipient": "oncall", "channel": "pagerduty", "message": "disk full" })
        );
    }

    // The controller runs on Kubernetes only: these tests exist in a build
    // with E2E_INFRA_BACKEND=kubernetes (see build.rs).
    #[cfg(e2e_kubernetes)]
    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[tokio::test]
    async fn a_request_the_controller_rejects_is_failed_with_the_reason(infra: &Infra) {
        let status =
            decided(infra, "by-fax", json!({ "recipient": "oncall", "channel": "fax", "message": "disk full" })).await;
        assert_eq!(status["phase"], "Failed", "{status}");
        assert_eq!(status["reason"], "unsupported channel `fax`: use one of email, slack, pagerduty", "{status}");
        assert!(status.get("notificationId").is_none(), "a rejected request has no audit event: {status}");
    }
}
