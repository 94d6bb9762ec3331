//! Records build facts for `ascend info`: target, profile, and whether CANN headers were found at
//! build time (they are not needed: the C API is declared by ascend-sys and loaded at run time).

use std::path::PathBuf;

fn main() {
    for var in ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let toolkit = ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"]
        .iter()
        .filter_map(|v| std::env::var_os(v).filter(|s| !s.is_empty()))
        .map(PathBuf::from)
        .chain([PathBuf::from("/usr/local/Ascend/ascend-toolkit/latest")])
        .find(|p| p.join("include/acl/acl.h").exists());
    let headers = match &toolkit {
        Some(p) => {
            let version = std::fs::read_to_string(p.join("version.cfg")).ok().and_then(|s| {
                s.lines().find_map(|l| {
                    l.split_once('=').filter(|(k, _)| k.contains("version")).map(|(_, v)| v.trim().to_string())
                })
            });
            format!("found at {} (version {})", p.display(), version.unwrap_or_else(|| "unknown".into()))
        }
        None => "not found (not needed: the C API is declared by ascend-sys and loaded at run time)".into(),
    };
    println!("cargo:rustc-env=ASCEND_BUILD_CANN_HEADERS={headers}");
    println!("cargo:rustc-env=ASCEND_BUILD_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    println!("cargo:rustc-env=ASCEND_BUILD_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
}
