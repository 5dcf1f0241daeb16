//! Loading built images where the deployment can reach them: into Kind
//! nodes, or into a registry the cluster pulls from.

pub mod kind;
pub mod registry;
