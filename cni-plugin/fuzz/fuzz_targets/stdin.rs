//! Everything a runtime can hand the plugin before it touches the kernel: the config on stdin
//! (decode, version check, validation, prevResult) and the CNI_* environment. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwork_cni::config::{Env, NetConf};
use meshwork_cni_spec::CniResult;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = NetConf::parse(data) {
        if let Some(prev) = conf.prev_result.clone() {
            if let Ok(r) = CniResult::from_value(prev) {
                for v in ["0.4.0", "1.0.0", "1.1.0"] {
                    let _ = r.to_json(v);
                }
            }
        }
        if let Ok(v) = conf.validate() {
            for r in &v.ranges {
                let _ = r.size();
            }
        }
    }
    // The same bytes as four NUL-separated CNI_* values.
    let mut parts = data.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
    let vals: Vec<String> = (0..4).map(|_| parts.next().unwrap_or_default()).collect();
    let _ = Env::parse(|k| match k {
        "CNI_COMMAND" => Some(vals[0].clone()),
        "CNI_CONTAINERID" => Some(vals[1].clone()),
        "CNI_NETNS" => Some(vals[2].clone()),
        "CNI_IFNAME" => Some(vals[3].clone()),
        _ => None,
    });
});
