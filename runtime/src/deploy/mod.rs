//! Deploy: standing the planned components up.

pub mod kube;
