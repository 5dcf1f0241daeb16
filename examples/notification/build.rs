//! The suite's needs depend on the backend: on Kubernetes it also stands up
//! the notification controller, which owns a custom resource and cannot run
//! on Docker. `E2E_INFRA_BACKEND` at build time decides, as a cfg.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(e2e_kubernetes)");
    println!("cargo::rerun-if-env-changed=E2E_INFRA_BACKEND");
    if matches!(std::env::var("E2E_INFRA_BACKEND").as_deref(), Ok("kubernetes" | "kind")) {
        println!("cargo::rustc-cfg=e2e_kubernetes");
    }
}
