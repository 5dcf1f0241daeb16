use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], backend = "kind", registry = "http://127.0.0.1:5000")]
mod suite {}

fn main() {}
