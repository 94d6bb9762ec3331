//! Simulator configuration, read from the environment once, when the runtime is first initialised.

/// What the simulated machine looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Physical devices simulated (`ASCEND_SIM_DEVICES`, default 8).
    pub physical_devices: u32,
    /// Logical device i is physical device `visible[i]` (`ASCEND_RT_VISIBLE_DEVICES`; default all).
    pub visible: Vec<u32>,
    /// Device memory per device in bytes (`ASCEND_SIM_HBM_BYTES`, default 32 GiB; suffixes K, M, G, T;
    /// 1 MiB ..= 16 TiB, else the default with a warning).
    pub hbm_bytes: usize,
    /// SoC name reported by `aclrtGetSocName` (`ASCEND_SIM_SOC`, default `Ascend910B3`).
    pub soc_name: String,
    /// Problems found while reading the environment, reported by `ascend info`.
    pub warnings: Vec<String>,
}

/// Default number of simulated devices.
pub const DEFAULT_DEVICES: u32 = 8;
/// Default device memory per device: 32 GiB, reserved lazily.
pub const DEFAULT_HBM_BYTES: usize = 32 << 30;
/// Default SoC name.
pub const DEFAULT_SOC: &str = "Ascend910B3";

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Config {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Config {
        let mut warnings = Vec::new();
        let physical_devices = match get("ASCEND_SIM_DEVICES") {
            None => DEFAULT_DEVICES,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => {
                    warnings
                        .push(format!("ASCEND_SIM_DEVICES={v:?} is not a number in 1..=1024; using {DEFAULT_DEVICES}"));
                    DEFAULT_DEVICES
                }
            },
        };
        let hbm_bytes = match get("ASCEND_SIM_HBM_BYTES") {
            None => DEFAULT_HBM_BYTES,
            Some(v) => match parse_bytes(&v) {
                Some(n) if (1 << 20..=1 << 44).contains(&n) => n,
                _ => {
                    warnings.push(format!("ASCEND_SIM_HBM_BYTES={v:?} is not a size in 1M..=16T; using 32G"));
                    DEFAULT_HBM_BYTES
                }
            },
        };
        let soc_name = get("ASCEND_SIM_SOC").filter(|s| !s.trim().is_empty()).unwrap_or_else(|| DEFAULT_SOC.into());
        let visible = match get("ASCEND_RT_VISIBLE_DEVICES") {
            None => (0..physical_devices).collect(),
            Some(v) => parse_visible(&v, physical_devices, &mut warnings),
        };
        Config { physical_devices, visible, hbm_bytes, soc_name, warnings }
    }
}

/// `ASCEND_RT_VISIBLE_DEVICES`: ascending, comma-separated physical ids; parsing stops at the first bad
/// entry (as CANN documents), keeping what came before it.
fn parse_visible(v: &str, physical: u32, warnings: &mut Vec<String>) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for item in v.split(',') {
        match item.trim().parse::<u32>() {
            Ok(id) if id < physical && out.last().is_none_or(|&l| id > l) => out.push(id),
            _ => {
                warnings.push(format!(
                    "ASCEND_RT_VISIBLE_DEVICES={v:?}: entry {item:?} is not an ascending device id below {physical}; \
                     parsing stopped there"
                ));
                break;
            }
        }
    }
    out
}

/// `123`, `64K`, `512M`, `32G`, `1T` (binary multiples).
pub fn parse_bytes(v: &str) -> Option<usize> {
    let v = v.trim();
    let (digits, shift) = match v.char_indices().last()? {
        (i, 'K' | 'k') => (&v[..i], 10),
        (i, 'M' | 'm') => (&v[..i], 20),
        (i, 'G' | 'g') => (&v[..i], 30),
        (i, 'T' | 't') => (&v[..i], 40),
        _ => (v, 0),
    };
    digits.trim().parse::<usize>().ok()?.checked_mul(1usize << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]);
        assert_eq!(c.physical_devices, 8);
        assert_eq!(c.visible, (0..8).collect::<Vec<_>>());
        assert_eq!(c.hbm_bytes, 32 << 30);
        assert_eq!(c.soc_name, "Ascend910B3");
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn visible_devices_stop_at_first_bad_entry() {
        assert_eq!(cfg(&[("ASCEND_RT_VISIBLE_DEVICES", "1,2,3")]).visible, vec![1, 2, 3]);
        let c = cfg(&[("ASCEND_RT_VISIBLE_DEVICES", "1,x,3")]);
        assert_eq!(c.visible, vec![1]);
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(cfg(&[("ASCEND_RT_VISIBLE_DEVICES", "3,1")]).visible, vec![3]);
        assert_eq!(cfg(&[("ASCEND_SIM_DEVICES", "2"), ("ASCEND_RT_VISIBLE_DEVICES", "1,2")]).visible, vec![1]);
    }

    #[test]
    fn sizes_and_bad_values() {
        assert_eq!(parse_bytes("64M"), Some(64 << 20));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("x"), None);
        let c =
            cfg(&[("ASCEND_SIM_HBM_BYTES", "12"), ("ASCEND_SIM_DEVICES", "0"), ("ASCEND_SIM_SOC", "Ascend910_9392")]);
        assert_eq!((c.hbm_bytes, c.physical_devices, c.soc_name.as_str()), (32 << 30, 8, "Ascend910_9392"));
        assert_eq!(c.warnings.len(), 2);
    }
}
