//! `ascend bench`: quick sweeps of the benchmarks, printed as a table or as JSON lines.

use ascend::bench::{collectives, runtime, Figure};
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Runs a sweep with a progress line on stderr when it is a terminal (none with `--json`, none in a
/// log, where the control codes would be noise), cleared at the end.
pub fn with_progress<T>(
    json: bool,
    sweep: impl FnOnce(&mut dyn FnMut(&str)) -> ascend::rt::Result<T>,
) -> ascend::rt::Result<T> {
    let show = !json && std::io::stderr().is_terminal();
    let mut shown = false;
    let mut progress = |name: &str| {
        if show {
            eprint!("\r\x1b[2K  measuring {name} ...");
            let _ = std::io::stderr().flush();
            shown = true;
        }
    };
    let result = sweep(&mut progress);
    if shown {
        eprint!("\r\x1b[2K");
    }
    result
}

/// Runs the all-reduce sweep.
pub fn run_collectives(
    ranks: usize,
    sizes: &[usize],
    processes: bool,
    dtype: &str,
    budget: Duration,
    json: bool,
) -> ascend::rt::Result<Vec<Figure>> {
    // Refused before any rank starts (or waits for another) when the buffers cannot fit.
    collectives::ensure_fits(ranks, sizes)?;
    let mut world = if processes {
        let exe = std::env::current_exe()
            .map_err(|e| ascend::rt::Error::Unsupported(format!("cannot find this program: {e}")))?;
        collectives::World::processes(ranks, &exe)?
    } else {
        collectives::World::threads(ranks)?
    };
    with_progress(json, |p| collectives::sweep(&mut world, sizes, dtype, budget, p))
}

/// How one parameter reads in the table: sizes in binary units, flags by name when set, figures
/// rounded, everything else `key=value` (strings such as the dtype alone).
fn param_text(key: &str, v: &serde_json::Value) -> Option<String> {
    Some(match v {
        serde_json::Value::Bool(false) => return None,
        serde_json::Value::Bool(true) => key.to_string(),
        serde_json::Value::String(s) => s.clone(),
        v if key == "bytes" => runtime::human_bytes(v.as_u64()? as usize),
        v if v.is_f64() => format!("{key}={:.2}", v.as_f64()?),
        v => format!("{key}={v}"),
    })
}

/// Prints figures as a table (or JSON lines). Figures measured against a limit (`bench all`) show
/// the limit and the fraction of it reached.
pub fn print(figures: &[Figure], json: bool) {
    if json {
        for f in figures {
            println!("{}", f.to_json());
        }
        return;
    }
    let get = |f: &Figure, k: &str| f.params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            let params: Vec<String> = f
                .params
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "backend" | "device" | "limit" | "limit_value" | "fraction"))
                .filter_map(|(k, v)| param_text(k, v))
                .collect();
            let limit = match (get(f, "limit"), get(f, "limit_value").and_then(|v| v.as_f64())) {
                (Some(name), Some(v)) => format!("{} {v:.1}", name.as_str().unwrap_or("")),
                _ => String::new(),
            };
            let reached =
                get(f, "fraction").and_then(|v| v.as_f64()).map_or(String::new(), |x| format!("{:.0}%", 100.0 * x));
            vec![f.name.clone(), params.join(" "), format!("{:.3}", f.value), f.unit.to_string(), limit, reached]
        })
        .collect();
    println!("{}", super::table::render(&["benchmark", "parameters", "value", "unit", "limit", "reached"], &rows));
}
