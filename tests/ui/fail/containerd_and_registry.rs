use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], backend = "kubernetes", containerd = "/run/containerd/containerd.sock", registry = "registry.ci.example:5000")]
mod suite {}

fn main() {}
