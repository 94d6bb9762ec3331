//! `ascend info`: the backend and why, the devices, the build facts.

use ascend::build_info;
use ascend::rt::{Backend, Context, Device, Runtime};
use serde_json::{json, Value};

/// Gathers everything `info` prints.
pub fn gather() -> Value {
    let mut v = json!({
        "version": build_info::VERSION,
        "build": { "target": build_info::TARGET, "profile": build_info::PROFILE, "cann_headers": build_info::CANN_HEADERS },
        "ascend_backend_env": std::env::var("ASCEND_BACKEND").unwrap_or_else(|_| "auto (unset)".into()),
        "kernels_level": ascend::kernels::cpu::active().name(),
        "kernels_cpu_level": ascend::kernels::cpu::detected().name(),
    });
    let rt = match Runtime::get() {
        Ok(rt) => rt,
        Err(e) => {
            v["error"] = json!(e.to_string());
            return v;
        }
    };
    v["backend"] = json!(rt.backend().name());
    v["reason"] = json!(rt.reason());
    if let Some(e) = rt.cann_error() {
        v["cann_error"] = json!(e);
    }
    if rt.backend() == Backend::Cann {
        v["libraries"] = json!(rt.libraries());
    } else {
        let c = ascend::sim::config();
        v["simulator"] = json!({
            "physical_devices": c.physical_devices,
            "visible": c.visible,
            "hbm_bytes": c.hbm_bytes,
            "compute_threads": ascend::sim::Pool::global().threads(),
            "warnings": c.warnings,
        });
    }
    let soc = Device::soc_name().ok().flatten();
    let devices: Vec<Value> = (0..Device::count().unwrap_or(0))
        .map(|d| match Context::new(d).and_then(|c| c.memory_info()) {
            Ok((free, total)) => {
                json!({ "device": d, "soc": soc, "memory_free_bytes": free, "memory_total_bytes": total })
            }
            Err(e) => json!({ "device": d, "error": e.to_string() }),
        })
        .collect();
    v["devices"] = json!(devices);
    v
}

/// Prints `info` as text.
pub fn print_text(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    println!("ascend-rs {}", s("version"));
    if let Some(e) = v["error"].as_str() {
        println!("backend: {e}");
        return;
    }
    println!("backend: {} ({})", s("backend"), s("reason"));
    println!("ASCEND_BACKEND: {}", s("ascend_backend_env"));
    let (level, cpu_level) = (s("kernels_level"), s("kernels_cpu_level"));
    let has = if level == cpu_level { String::new() } else { format!("the CPU has up to {cpu_level}; ") };
    println!("host kernels: {level} SIMD level ({has}ASCEND_KERNELS_LEVEL forces another)");
    if let Some(e) = v["cann_error"].as_str() {
        println!("CANN: {}", e.replace('\n', "\n  "));
    }
    if let Some(libs) = v["libraries"].as_array() {
        for l in libs {
            println!("  {}", l.as_str().unwrap_or(""));
        }
    }
    if let Some(sim) = v.get("simulator") {
        println!(
            "simulator: {} physical devices, visible {}, {} bytes HBM each, {} compute threads",
            sim["physical_devices"], sim["visible"], sim["hbm_bytes"], sim["compute_threads"]
        );
        for w in sim["warnings"].as_array().into_iter().flatten() {
            println!("  warning: {}", w.as_str().unwrap_or(""));
        }
    }
    let rows: Vec<Vec<String>> = v["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let gib = |k: &str| d[k].as_f64().map_or("-".into(), |b| format!("{:.1} GiB", b / (1u64 << 30) as f64));
            vec![
                d["device"].to_string(),
                d["soc"].as_str().unwrap_or("-").to_string(),
                gib("memory_free_bytes"),
                gib("memory_total_bytes"),
                d["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    println!("{}", super::table::render(&["device", "soc", "free", "total", "error"], &rows));
    println!(
        "build: {} {}; CANN headers {}",
        v["build"]["target"].as_str().unwrap_or(""),
        v["build"]["profile"].as_str().unwrap_or(""),
        v["build"]["cann_headers"].as_str().unwrap_or("")
    );
}
