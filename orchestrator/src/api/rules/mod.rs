//! Per-kind `Rules` implementations (see `kind.rs`).

pub mod apps;
pub mod core;
pub mod rbac;
