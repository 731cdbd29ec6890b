//! Per-kind `Rules` implementations (see `kind.rs`).

pub mod admissionregistration;
pub mod apps;
pub mod batch;
pub mod coordination;
pub mod core;
pub mod rbac;
