use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = [])]
mod suite {}

fn main() {}
