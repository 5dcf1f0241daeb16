use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], cluster = "e2e")]
mod suite {}

fn main() {}
