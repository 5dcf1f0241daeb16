use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], backend = "kubernetes")]
mod suite {}

fn main() {}
