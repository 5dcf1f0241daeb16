use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "Notification_E2E", needs = ["datastorage"])]
mod suite {}

fn main() {}
