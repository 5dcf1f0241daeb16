use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], timeout = 300)]
mod suite {}

fn main() {}
