//! Deploying a plan: standing its components up, each after its
//! dependencies are ready, on the Docker backend or on Kubernetes, and
//! removing them by label.

pub mod docker;
pub mod kube;
pub(crate) mod ready;
