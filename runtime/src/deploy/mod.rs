//! Deploying a plan: standing its components up, each after its
//! dependencies are ready, and tearing them down by label.

pub mod docker;
