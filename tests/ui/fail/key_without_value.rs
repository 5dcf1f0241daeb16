use e2e_infra::e2e_infra;

#[e2e_infra(consumer, needs = ["datastorage"])]
mod suite {}

fn main() {}
