use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod notification_e2e {
    #[test]
    fn starts_without_the_handle() {
        assert_eq!(1 + 1, 2);
    }
}

fn main() {}
