//! Compile-time checks of `#[e2e_infra]`: each mistake a suite can make in the
//! attribute or in its module fails the build with a message that says what to
//! do, at the token that is wrong. Snapshots are the committed `.stderr` files.

use std::path::Path;

/// The attribute finds its catalog through this variable; setting it per
/// batch keeps the cases independent of where the workspace is checked out.
const CATALOG_ENV: &str = "E2E_INFRA_CONFIG";

fn ui(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui").join(path).display().to_string()
}

// One test, batches in sequence: the catalog is chosen by a process-wide
// variable, so the batches must not overlap.
#[test]
fn attribute() {
    std::env::set_var(CATALOG_ENV, ui("e2e-infra.toml"));
    {
        let t = trybuild::TestCases::new();
        t.compile_fail("ui/fail/*.rs");
        t.pass("ui/pass/*.rs");
    }

    std::env::set_var(CATALOG_ENV, ui("catalog/nowhere.toml"));
    trybuild::TestCases::new().compile_fail("ui/catalog/missing/*.rs");

    std::env::set_var(CATALOG_ENV, ui("catalog/broken.toml"));
    trybuild::TestCases::new().compile_fail("ui/catalog/broken/*.rs");
}
