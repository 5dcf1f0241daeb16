use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = "datastorage")]
mod suite {}

fn main() {}
