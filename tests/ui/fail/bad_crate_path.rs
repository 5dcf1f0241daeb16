use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], crate = "e2e infra")]
mod suite {}

fn main() {}
