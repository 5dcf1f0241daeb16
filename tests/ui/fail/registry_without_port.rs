use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], backend = "kind", registry = "localhost")]
mod suite {}

fn main() {}
