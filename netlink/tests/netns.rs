//! Named network namespaces created and removed without `ip netns` (root): a new namespace
//! distinct from ours, with only a loopback that starts down; removal unmounts and unlinks,
//! and a second removal is not an error.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::os::unix::fs::MetadataExt;

use meshwork_netlink::{Netlink, Netns};

/// Removes the namespace file even when an assertion fails (a crashed run's leftover is swept by
/// `scripts/test.sh` through its `mwl-` prefix).
struct Guard(std::path::PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Netns::delete(&self.0);
    }
}

#[tokio::test]
async fn create_and_delete_a_named_namespace() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "creating network namespaces needs root"
    );
    let path = std::path::PathBuf::from(format!("/run/netns/mwl-nltest-{}", std::process::id()));
    let _ = Netns::delete(&path);
    let g = Guard(path.clone());
    let ns = Netns::create(&path).unwrap();
    let ours = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    assert_ne!(
        std::fs::metadata(&path).unwrap().ino(),
        ours,
        "a new namespace"
    );
    // A second create of the same name is refused, and leaves the first alone.
    assert!(Netns::create(&path).is_err());
    let nl = Netlink::connect_in(&ns).unwrap();
    let links = nl.links().await.unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!((links[0].name.as_str(), links[0].up), ("lo", false));
    nl.set_up(links[0].index).await.unwrap();
    assert!(nl.link_by_name("lo").await.unwrap().unwrap().up);
    drop(nl);
    drop(ns);
    Netns::delete(&path).unwrap();
    assert!(!path.exists());
    Netns::delete(&path).unwrap();
    drop(g);
}
