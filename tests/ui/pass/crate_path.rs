// The runtime reached through a renamed crate, as a re-exporting crate would.
extern crate e2e_infra as infra_runtime;

#[infra_runtime::e2e_infra(consumer = "notification", needs = ["datastorage"], crate = "infra_runtime")]
mod notification_e2e {
    #[test]
    fn uses_the_handle(infra: &infra_runtime::Infra) {
        let _ = infra;
    }
}

fn main() {}
