//! `ascend bench`: quick sweeps of the benchmarks, printed as a table or as JSON lines.

use ascend::bench::{collectives, runtime, Figure};
use std::io::Write;
use std::time::Duration;

/// Runs the runtime sweep.
pub fn run_runtime(device: usize, budget: Duration, sizes: &[usize], json: bool) -> ascend::rt::Result<Vec<Figure>> {
    let figures = runtime::sweep(device, budget, sizes, progress(json))?;
    if !json {
        eprint!("\r\x1b[2K");
    }
    Ok(figures)
}

fn progress(json: bool) -> impl FnMut(&str) {
    move |name: &str| {
        if !json {
            eprint!("\r\x1b[2K  measuring {name} ...");
            let _ = std::io::stderr().flush();
        }
    }
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
    let mut world = if processes {
        let exe = std::env::current_exe()
            .map_err(|e| ascend::rt::Error::Unsupported(format!("cannot find this program: {e}")))?;
        collectives::World::processes(ranks, &exe)?
    } else {
        collectives::World::threads(ranks)?
    };
    let figures = collectives::sweep(&mut world, sizes, dtype, budget, progress(json))?;
    if !json {
        eprint!("\r\x1b[2K");
    }
    Ok(figures)
}

/// Prints figures as a table (or JSON lines).
pub fn print(figures: &[Figure], json: bool) {
    if json {
        for f in figures {
            println!("{}", f.to_json());
        }
        return;
    }
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            let params: Vec<String> = f
                .params
                .iter()
                .filter(|(k, _)| k != "backend" && k != "device")
                .filter(|(k, _)| !matches!(k.as_str(), "ranks" | "mode" | "dtype") || f.name.starts_with("collectives"))
                .map(|(k, v)| match (k.as_str(), v.as_u64()) {
                    ("bytes", Some(b)) => runtime::human_bytes(b as usize),
                    _ => v.as_str().map_or(v.to_string(), str::to_string),
                })
                .collect();
            vec![f.name.clone(), params.join(" "), format!("{:.3}", f.value), f.unit.to_string()]
        })
        .collect();
    println!("{}", super::table::render(&["benchmark", "parameters", "value", "unit"], &rows));
}
