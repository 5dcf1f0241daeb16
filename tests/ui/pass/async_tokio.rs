use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod notification_e2e {
    use e2e_infra::Infra;

    #[tokio::test]
    async fn current_thread(infra: &Infra) {
        let _ = infra;
        tokio::task::yield_now().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multi_thread(infra: &Infra) {
        let _ = infra;
    }

    #[tokio::test]
    async fn without_the_handle() {
        tokio::task::yield_now().await;
    }
}

fn main() {}
