// Every mistake is reported in one build, each at its own token.
use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "Notification", needs = ["datastorge"], cluster = "e2e", timeout = "soon")]
mod suite {
    #[test]
    fn stores_a_notification(retries: u32) {
        let _ = retries;
    }
}

fn main() {}
