use e2e_infra::e2e_infra;

pub struct Notification {
    pub id: u32,
}

#[e2e_infra(consumer = "notification", needs = ["datastorage"], timeout = "90s")]
pub mod notification_e2e {
    //! A suite with helpers next to its tests.
    #![allow(dead_code)]

    use super::Notification;
    use e2e_infra::Infra;

    const RETRIES: u32 = 3;

    struct Fixture {
        notification: Notification,
    }

    fn fixture() -> Fixture {
        Fixture { notification: Notification { id: RETRIES } }
    }

    /// A helper reaching the handle without taking it as a parameter.
    fn handle() -> &'static Infra {
        infra()
    }

    mod nested {
        pub fn from_nested() -> &'static e2e_infra::Infra {
            super::infra()
        }
    }

    #[test]
    fn uses_a_fixture(infra: &Infra) {
        let fixture = fixture();
        assert_eq!(fixture.notification.id, RETRIES);
        let _ = (infra, handle(), nested::from_nested());
    }
}

/// The accessor is reachable from outside the module; taking its address
/// does not set anything up.
fn main() {
    let _accessor: fn() -> &'static e2e_infra::Infra = notification_e2e::infra;
}
