//! mesh-ctl as a library: the lab cluster builder shared by `mesh-ctl up` and the e2e tests.

pub mod cluster;
pub mod stack;
