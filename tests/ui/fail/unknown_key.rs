use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], timout = "300s")]
mod suite {}

fn main() {}
