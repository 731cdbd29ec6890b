//! The Meshwork CNI plugin as a library: the binary (`main.rs`) is a thin shell around
//! [`app::run`]; the parsers are public so the fuzz target can drive them.

pub mod app;
pub mod config;
pub mod ipam;
pub mod net;
