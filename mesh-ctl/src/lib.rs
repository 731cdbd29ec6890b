//! mesh-ctl as a library: the lab cluster builder and stack helpers the e2e tests use
//! (`mesh-ctl up` takes the example CNI config from `cluster`).

pub mod cluster;
pub mod stack;
