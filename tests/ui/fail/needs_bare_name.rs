use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["postgres", redis])]
mod suite {}

fn main() {}
