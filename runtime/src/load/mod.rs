//! Loading built images where the deployment can reach them: into a node's
//! containerd (Kind node containers, or a socket on this machine), or into a
//! registry the cluster pulls from.

pub mod archive;
pub mod containerd;
pub mod content;
pub mod credentials;
pub mod kind;
pub(crate) mod oci;
pub mod registry;
pub mod store;
