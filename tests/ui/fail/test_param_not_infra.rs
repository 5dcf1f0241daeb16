use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod suite {
    #[test]
    fn stores_a_notification(retries: u32) {
        assert!(retries > 0);
    }
}

fn main() {}
