//! Helpers shared by the workspace-level suites.

pub mod kind_node;
