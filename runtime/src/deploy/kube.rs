//! Deploying the planned components to Kubernetes.
