use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"])]
fn stores_a_notification() {
    let _ = 1 + 1;
}

fn main() {}
