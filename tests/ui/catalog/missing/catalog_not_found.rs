// Built with E2E_INFRA_CONFIG naming a file that does not exist.
use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod suite {}

fn main() {}
