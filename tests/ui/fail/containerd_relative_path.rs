use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], backend = "kubernetes", containerd = "node/containerd.sock")]
mod suite {}

fn main() {}
