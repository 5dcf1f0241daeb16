use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"], timeout = "five minutes")]
mod suite {}

fn main() {}
