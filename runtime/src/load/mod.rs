//! Load: making built images available where the run's workloads start.

pub mod kind;
