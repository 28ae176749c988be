//! Kubernetes mode: watches `IstioMulticloud` objects and local facts with
//! `kube`, writes status with server-side apply while holding a Lease, and
//! keeps the federation key in a Secret.
