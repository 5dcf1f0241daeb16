use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", backend = "docker")]
mod suite {}

fn main() {}
