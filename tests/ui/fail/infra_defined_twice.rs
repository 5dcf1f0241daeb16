use e2e_infra::e2e_infra;

#[e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod suite {
    pub fn infra() -> u32 {
        7
    }
}

fn main() {}
