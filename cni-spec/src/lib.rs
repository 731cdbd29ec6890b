//! CNI 1.1 types and a plugin invoker (see README.md).

pub mod invoke;
pub mod types;

pub use invoke::{InvokeError, Invoker, RuntimeConf};
pub use types::*;
