//! The integration tests' private PostgreSQL cluster, for the unit tests that need one
//! (the PostgreSQL backend's own, and the conformance suite): one copy of the module, so
//! that the lib test binary holds one cluster type.
#![allow(dead_code)]

#[path = "../../tests/it/common/postgres.rs"]
pub mod cluster;
// The test PKI and network namespaces, which the cluster module can start a server with.
#[path = "../../tests/it/common/netns.rs"]
mod netns;
#[path = "../../tests/it/common/pki.rs"]
mod pki;
