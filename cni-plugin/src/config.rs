//! The plugin's network configuration (stdin) and environment (CNI_*).
//!
//! Runtime-injected and foreign top-level keys (`runtimeConfig`, `args`, `capabilities`, ...) are
//! accepted and ignored, as the spec asks; our own `ipam` object is strict so a typo such as
//! `"subnt"` is an error, not a silently different network.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use meshwork_cni_spec::{code, is_supported, Attachment, CniError, Dns, SUPPORTED_VERSIONS};
use serde::Deserialize;
use serde_json::Value;

pub const ENV_COMMAND: &str = "CNI_COMMAND";
pub const ENV_CONTAINERID: &str = "CNI_CONTAINERID";
pub const ENV_NETNS: &str = "CNI_NETNS";
pub const ENV_IFNAME: &str = "CNI_IFNAME";
/// Log filter for stderr: `level` and `target=level` directives (`meshwork_daemon::log_filter`).
pub const ENV_LOG: &str = "MESHWORK_CNI_LOG";
/// Test seam: abort the process at a named point of ADD (`after-lease`, `after-veth`) to prove
/// that a crash there never double-allocates an address.
pub const ENV_CRASH_AT: &str = "MESHWORK_CNI_CRASH_AT";

pub const DEFAULT_BRIDGE: &str = "mw0";
pub const DEFAULT_VXLAN_DEVICE: &str = "mw.vxlan";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/meshwork";
/// Outer Ethernet + IPv4 + UDP + VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 50;
pub const FALLBACK_MTU: u32 = 1500 - VXLAN_OVERHEAD;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// The CNI_* environment, validated per command.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

impl Env {
    /// Reads and validates the environment through `get` (the process env in production).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let bad = |msg: String| CniError::new(code::INVALID_ENV, msg);
        let command = match get(ENV_COMMAND).as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            Some(other) => return Err(bad(format!("unknown CNI_COMMAND {other:?}"))),
            None => return Err(bad("CNI_COMMAND is not set".into())),
        };
        let container_id = get(ENV_CONTAINERID).unwrap_or_default();
        let netns = get(ENV_NETNS).unwrap_or_default();
        let ifname = get(ENV_IFNAME).unwrap_or_default();
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            validate_container_id(&container_id).map_err(bad)?;
            validate_ifname(&ifname).map_err(bad)?;
        }
        if matches!(command, Command::Add | Command::Check) && netns.is_empty() {
            return Err(bad("CNI_NETNS is required for ADD and CHECK".into()));
        }
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
        })
    }
}

/// libcni's rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("CNI_CONTAINERID is required".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!(
                "invalid CNI_CONTAINERID {id:?}: must start with a letter or digit"
            ))
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "invalid CNI_CONTAINERID {id:?}: only letters, digits, '_', '.', '-'"
        ));
    }
    Ok(())
}

/// The kernel's rules for interface names (IFNAMSIZ and dev_valid_name).
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("CNI_IFNAME is required".into());
    }
    if name.len() > 15 {
        return Err(format!("invalid CNI_IFNAME {name:?}: longer than 15 bytes"));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!("invalid CNI_IFNAME {name:?}"));
    }
    Ok(())
}

/// The network name becomes a directory under `dataDir` and part of veth aliases: no path
/// tricks, no separators.
pub fn validate_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid network name {name:?}"),
        ));
    }
    Ok(())
}

fn default_bridge() -> String {
    DEFAULT_BRIDGE.into()
}
fn default_vxlan_device() -> String {
    DEFAULT_VXLAN_DEVICE.into()
}
fn default_data_dir() -> PathBuf {
    DEFAULT_DATA_DIR.into()
}

/// The network configuration on stdin.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    pub mtu: Option<u32>,
    /// Derive the MTU from this link (minus VXLAN overhead) when `mtu` is unset.
    pub uplink: Option<String>,
    #[serde(default = "default_vxlan_device")]
    pub vxlan_device: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub ipam: IpamConf,
    #[serde(default)]
    pub dns: Dns,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub ipam_type: Option<String>,
    pub subnet: Option<Ipv4Net>,
    pub range_start: Option<Ipv4Addr>,
    pub range_end: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub routes: Option<Vec<RouteConf>>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// One address family's allocation range, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub gateway: IpAddr,
    pub start: IpAddr,
    pub end: IpAddr,
}

impl Range {
    pub fn size(&self) -> u128 {
        ip_u128(self.end) - ip_u128(self.start) + 1 - u128::from(self.contains_alloc(self.gateway))
    }

    /// Whether `ip` is allocatable space (inside start..=end).
    pub fn contains_alloc(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && ip_u128(ip) >= ip_u128(self.start)
            && ip_u128(ip) <= ip_u128(self.end)
    }
}

pub fn ip_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn u128_ip(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// A configuration that passed validation.
#[derive(Clone, Debug)]
pub struct Validated {
    pub conf: NetConf,
    pub ranges: Vec<Range>,
    pub routes: Vec<RouteConf>,
}

impl NetConf {
    /// Decodes stdin: not JSON → code 6; JSON that is not a valid config → 7; unsupported
    /// version → 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode network configuration")
                .with_details(e.to_string())
        })?;
        let version = v.get("cniVersion").and_then(Value::as_str).unwrap_or("");
        if !is_supported(version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {version:?}"),
            )
            .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
        let conf: NetConf = serde_json::from_value(v).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "invalid network configuration")
                .with_details(e.to_string())
        })?;
        Ok(conf)
    }

    /// Checks everything ADD/CHECK/STATUS/GC rely on.
    pub fn validate(self) -> Result<Validated, CniError> {
        let bad = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
        validate_name(&self.name)?;
        validate_ifname(&self.bridge).map_err(|e| bad(format!("bridge: {e}")))?;
        if let Some(t) = &self.ipam.ipam_type {
            if t != "meshwork" {
                return Err(bad(format!(
                    "ipam.type {t:?}: IPAM is built in; omit the type or set \"meshwork\""
                )));
            }
        }
        if let Some(mtu) = self.mtu {
            let min = if self.ipam.subnet6.is_some() {
                1280
            } else {
                576
            };
            if !(min..=65535).contains(&mtu) {
                return Err(bad(format!("mtu {mtu} out of range {min}..=65535")));
            }
        }
        let mut ranges = Vec::new();
        if let Some(net) = self.ipam.subnet {
            ranges.push(v4_range(net, &self.ipam).map_err(bad)?);
        }
        if let Some(net) = self.ipam.subnet6 {
            ranges.push(v6_range(net, self.ipam.gateway6).map_err(bad)?);
        }
        if ranges.is_empty() {
            return Err(bad("ipam.subnet (or ipam.subnet6) is required".into()));
        }
        let routes = match &self.ipam.routes {
            Some(r) => r.clone(),
            None => ranges
                .iter()
                .map(|r| RouteConf {
                    dst: if r.subnet.addr().is_ipv4() {
                        IpNet::V4(Ipv4Net::default())
                    } else {
                        IpNet::V6(Ipv6Net::default())
                    },
                    gw: None,
                })
                .collect(),
        };
        for r in &routes {
            let fam_ok = ranges
                .iter()
                .any(|rg| rg.subnet.addr().is_ipv4() == r.dst.addr().is_ipv4());
            if !fam_ok {
                return Err(bad(format!(
                    "route {} has no subnet of its address family",
                    r.dst
                )));
            }
        }
        Ok(Validated {
            conf: self,
            ranges,
            routes,
        })
    }
}

fn v4_range(net: Ipv4Net, ipam: &IpamConf) -> Result<Range, String> {
    if net.prefix_len() > 30 {
        return Err(format!("ipam.subnet {net}: prefix must be /30 or shorter"));
    }
    let net = net.trunc();
    let first = u32::from(net.network()) + 1;
    let last = u32::from(net.broadcast()) - 1;
    let inside = |ip: Ipv4Addr| (first..=last).contains(&u32::from(ip));
    let gateway = ipam.gateway.unwrap_or(Ipv4Addr::from(first));
    if !inside(gateway) {
        return Err(format!(
            "ipam.gateway {gateway} is not a host address of {net}"
        ));
    }
    let start = ipam.range_start.unwrap_or(Ipv4Addr::from(first));
    let end = ipam.range_end.unwrap_or(Ipv4Addr::from(last));
    if !inside(start) || !inside(end) || start > end {
        return Err(format!(
            "ipam.rangeStart/rangeEnd {start}-{end} must be an ordered range inside {net}"
        ));
    }
    Ok(Range {
        subnet: IpNet::V4(net),
        gateway: IpAddr::V4(gateway),
        start: IpAddr::V4(start),
        end: IpAddr::V4(end),
    })
}

fn v6_range(net: Ipv6Net, gw: Option<Ipv6Addr>) -> Result<Range, String> {
    if net.prefix_len() > 126 {
        return Err(format!(
            "ipam.subnet6 {net}: prefix must be /126 or shorter"
        ));
    }
    let net = net.trunc();
    let first = u128::from(net.network()) + 1;
    let last = u128::from(net.broadcast());
    let gateway = gw.unwrap_or(Ipv6Addr::from(first));
    if !(first..=last).contains(&u128::from(gateway)) {
        return Err(format!("ipam.gateway6 {gateway} is not inside {net}"));
    }
    Ok(Range {
        subnet: IpNet::V6(net),
        gateway: IpAddr::V6(gateway),
        start: IpAddr::V6(Ipv6Addr::from(first)),
        end: IpAddr::V6(Ipv6Addr::from(last)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_errors_are_code_4() {
        for pairs in [
            vec![],
            vec![("CNI_COMMAND", "FROB")],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "-bad"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "a-very-long-ifname"),
                ("CNI_NETNS", "/x"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
            ],
        ] {
            let err = Env::parse(env(&pairs)).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{pairs:?}: {err}");
        }
        // DEL needs no netns.
        let ok = Env::parse(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]));
        assert!(ok.is_ok());
        // VERSION needs nothing else.
        assert!(Env::parse(env(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }

    #[test]
    fn decode_invalid_and_version_codes() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, code::DECODE);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n"}"#)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","mtu":"big"}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnt":"10.0.0.0/24"}}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG,
            "a typo in our own ipam object is an error"
        );
    }

    fn validated(json: &str) -> Result<Validated, CniError> {
        NetConf::parse(json.as_bytes())?.validate()
    }

    #[test]
    fn validation_rules() {
        let ok =
            validated(r#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnet":"10.244.1.0/24"}}"#)
                .unwrap();
        assert_eq!(
            ok.ranges[0].gateway,
            "10.244.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ok.ranges[0].size(),
            253,
            ".1 is the gateway, .0 and .255 are not hosts"
        );
        assert_eq!(ok.routes[0].dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
        for bad in [
            r#"{"cniVersion":"1.1.0","name":"n"}"#,
            r#"{"cniVersion":"1.1.0","name":"../x","ipam":{"subnet":"10.0.0.0/24"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnet":"10.0.0.0/31"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.3"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","mtu":100,"ipam":{"subnet":"10.0.0.0/24"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","bridge":"a-bridge-name-too-long","ipam":{"subnet":"10.0.0.0/24"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnet":"10.0.0.0/24","routes":[{"dst":"::/0"}]}}"#,
        ] {
            let err = validated(bad).unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{bad}: {err}");
        }
    }

    #[test]
    fn dual_stack_ranges() {
        let v = validated(r#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnet":"10.244.1.0/24","subnet6":"fd00:244:1::/64"}}"#).unwrap();
        assert_eq!(v.ranges.len(), 2);
        assert_eq!(
            v.ranges[1].gateway,
            "fd00:244:1::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(v.routes.len(), 2, "a default route per family");
    }
}
