use e2e_infra::e2e_infra;

#[e2e_infra(needs = ["datastorage"])]
mod suite {}

fn main() {}
