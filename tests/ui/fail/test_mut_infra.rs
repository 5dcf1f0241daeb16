use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod suite {
    use e2e_infra::Infra;

    #[test]
    fn stores_a_notification(infra: &mut Infra) {
        let _ = infra;
    }
}

fn main() {}
