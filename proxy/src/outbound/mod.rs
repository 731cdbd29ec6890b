//! The outbound stack (app → proxy → peer), in linkerd2-proxy's `app/outbound` shape
//! (ARCHITECTURE.md, "The proxy"). Built so far: the per-endpoint breaker the balancer will
//! consult.

pub mod breaker;
