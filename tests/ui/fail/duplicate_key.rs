use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], consumer = "audit")]
mod suite {}

fn main() {}
