//! The bundled orchestrator (see README.md). Today: the Kubernetes API server subset.
//! `api/` holds the resources and verbs over a `Store`; `server/` the transport (TLS, tokens,
//! kubeconfig); `app.rs` wires them for the binary.

pub mod api;
pub mod app;
pub mod config;
pub mod controllers;
pub mod node;
pub mod scheduler;
pub mod server;
