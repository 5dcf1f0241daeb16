use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod notification_e2e {
    use e2e_infra::Infra;

    #[test]
    fn by_import(infra: &Infra) {
        let _: &'static Infra = infra;
    }

    #[test]
    fn by_path(handle: &e2e_infra::Infra) {
        let _ = handle;
    }

    #[test]
    fn with_lifetime(infra: &'static Infra) {
        let _ = infra;
    }

    #[test]
    fn ignored_handle(_: &Infra) {}

    #[test]
    #[should_panic]
    fn without_the_handle() {
        panic!("expected");
    }
}

fn main() {}
