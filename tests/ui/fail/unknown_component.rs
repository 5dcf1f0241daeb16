use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorge", "kafka"])]
mod suite {}

fn main() {}
