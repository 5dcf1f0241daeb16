use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["redis", "postgres", "redis"])]
mod suite {}

fn main() {}
