//! The bundled orchestrator (see README.md): the Kubernetes API server subset (`api/`
//! resources and verbs over a `Store`, `server/` transport, tokens, RBAC), `controllers/`, the
//! scheduler and the node runtime (`node/`); `app.rs` wires them for the binary.

pub mod api;
pub mod app;
pub mod config;
pub mod controllers;
pub mod node;
pub mod scheduler;
pub mod server;
