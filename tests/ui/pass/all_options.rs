use e2e_infra::e2e_infra;

#[e2e_infra(
    consumer = "notification-e2e",
    needs = ["datastorage", "redis"],
    backend = "kind",
    cluster = "notification",
    registry = "127.0.0.1:5000",
    timeout = "2m 30s",
    crate = "::e2e_infra",
)]
mod notification_e2e {
    use e2e_infra::Infra;

    #[test]
    fn uses_the_handle(infra: &Infra) {
        let _ = infra;
    }
}

#[e2e_infra(consumer = "audit", needs = ["postgres"], backend = "docker")]
mod audit_e2e {}

#[e2e_infra(consumer = "reports", needs = ["redis"], backend = "kind")]
mod reports_e2e {}

#[e2e_infra(
    consumer = "billing",
    needs = ["redis"],
    backend = "kubernetes",
    context = "local",
    containerd = "/run/k3s/containerd/containerd.sock",
)]
mod billing_e2e {}

#[e2e_infra(consumer = "shared", needs = ["redis"], backend = "kubernetes", registry = "registry.ci.example:5000")]
mod shared_cluster_e2e {}

fn main() {}
