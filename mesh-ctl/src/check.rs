//! `mesh-ctl check`: the pre-flight of `up`. Each check says what it needs and, when it fails,
//! the command that fixes it.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;

use crate::bringup::{UpArgs, HOST_ADDR, POD_CIDR, PROMETHEUS, SERVICE_CIDR};

pub struct Check {
    pub what: String,
    /// None: passed; Some(fix).
    pub fix: Option<String>,
}

fn pass(what: impl Into<String>) -> Check {
    Check {
        what: what.into(),
        fix: None,
    }
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        what: what.into(),
        fix: Some(fix.into()),
    }
}

fn check(ok: bool, what: impl Into<String>, fix: impl Into<String>) -> Check {
    if ok {
        pass(what)
    } else {
        fail(what, fix)
    }
}

/// A binary of this workspace next to `mesh-ctl` (as scripts/up.sh builds them).
pub fn sibling(bin: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// IPv4 routes in the root namespace (destination networks), from /proc/net/route.
fn host_routes() -> Vec<(Ipv4Net, String)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            let addr = Ipv4Addr::from(u32::from_be(dst));
            let prefix = u32::from_be(mask).leading_ones() as u8;
            Some((Ipv4Net::new(addr, prefix).ok()?, f[0].to_string()))
        })
        .collect()
}

pub fn run(a: &UpArgs) -> Vec<Check> {
    let mut out = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    out.push(check(
        root,
        "running as root (namespaces, eBPF, cgroups)",
        "run it as root: sudo mesh-ctl up",
    ));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    out.push(check(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("cgroup2")),
        "cgroup v2 mounted (pods' cgroups, the socket load balancer)",
        "mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1)",
    ));
    // The control agent mounts bpffs at /sys/fs/bpf when it is not there.
    let bpffs = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("bpf"));
    out.push(check(
        bpffs,
        "bpffs supported (pinned datapath maps under /sys/fs/bpf)",
        "boot a kernel built with CONFIG_BPF_SYSCALL (Debian's is)",
    ));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    out.push(check(
        (major, minor) >= (5, 15),
        format!(
            "kernel 5.15 or newer (cgroup.kill, eBPF socket hooks): {}",
            release.trim()
        ),
        "boot a newer kernel (Debian 12's 6.1 works)",
    ));
    let vxlan = Path::new("/sys/module/vxlan").exists()
        || std::process::Command::new("modprobe")
            .arg("vxlan")
            .status()
            .is_ok_and(|s| s.success());
    out.push(check(
        vxlan,
        "vxlan kernel module (the overlay between nodes)",
        "apt-get install linux-image-$(uname -r) kmod && modprobe vxlan",
    ));
    for tool in ["ip", "busybox", "nginx"] {
        out.push(check(
            on_path(tool) || Path::new("/bin").join(tool).exists(),
            format!("{tool} installed"),
            "scripts/setup.sh (installs iproute2, busybox-static, nginx)",
        ));
    }
    let kubectl = crate::state::kubectl();
    out.push(check(
        kubectl.is_file() || on_path("kubectl"),
        format!("kubectl ({})", kubectl.display()),
        "scripts/setup.sh (installs kubectl 1.33)",
    ));
    for bin in std::iter::once("meshwork-orchestrator").chain(crate::addons::IMAGES) {
        out.push(check(
            sibling(bin).is_some(),
            format!("{bin} next to mesh-ctl"),
            "scripts/up.sh builds them (cargo build --release of the packages it names)",
        ));
    }
    out.push(check(
        a.cni_plugin.is_file(),
        format!("CNI plugin {}", a.cni_plugin.display()),
        "scripts/up.sh installs it (target/release/meshwork-cni → /opt/cni/bin/meshwork)",
    ));
    if a.monitoring {
        out.push(check(
            on_path("prometheus"),
            "prometheus installed (--monitoring)",
            "apt-get install prometheus (scripts/setup.sh does)",
        ));
        out.push(check(
            std::net::TcpListener::bind(PROMETHEUS).is_ok(),
            format!("{PROMETHEUS} free for Prometheus"),
            "stop what listens there (ss -ltnp 'sport = :9090'), e.g. systemctl stop prometheus",
        ));
    }
    let link_taken = Path::new("/sys/class/net").join(&a.lab.host_link).exists();
    out.push(check(
        !link_taken,
        format!("no link named {} in the root namespace", a.lab.host_link),
        "a cluster (or its leftovers) is there: mesh-ctl down",
    ));
    // The host link's subnet and routes must not shadow the machine's own networks.
    let ours: Vec<Ipv4Net> = [HOST_ADDR, POD_CIDR, SERVICE_CIDR]
        .iter()
        .filter_map(|s| s.parse::<Ipv4Net>().ok().map(|n| n.trunc()))
        .collect();
    let clashes: Vec<String> = host_routes()
        .into_iter()
        .filter(|(r, dev)| {
            r.prefix_len() > 0
                && dev != &a.lab.host_link
                && ours.iter().any(|o| o.contains(r) || r.contains(o))
        })
        .map(|(r, dev)| format!("{r} dev {dev}"))
        .collect();
    out.push(check(
        clashes.is_empty(),
        format!(
            "{}, {POD_CIDR} and {SERVICE_CIDR} unused on this machine",
            ours[0]
        ),
        format!(
            "this machine already routes {}: remove those routes or networks first",
            clashes.join(", ")
        ),
    ));
    out
}

/// Prints the checks; true when all passed.
pub fn report(checks: &[Check], verbose: bool) -> bool {
    let mut ok = true;
    for c in checks {
        match &c.fix {
            None if verbose => println!("  ok    {}", c.what),
            None => {}
            Some(fix) => {
                ok = false;
                println!("  FAIL  {}\n        fix: {fix}", c.what);
            }
        }
    }
    ok
}
