use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], backend = "kind", containerd = "/run/containerd/containerd.sock")]
mod suite {}

fn main() {}
