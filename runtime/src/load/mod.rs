//! Loading built images where the deployment can reach them.

pub mod registry;
