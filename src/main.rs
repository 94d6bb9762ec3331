//! The `ascend` command-line tool.

mod cli {
    pub mod bench;
    pub mod info;
    pub mod selftest;
    pub mod table;
}

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ascend", version, about = "ascend-rs: Rust runtime for Ascend NPUs (or its host simulator)")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the backend in use and why, the devices, and the build facts.
    Info {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Exercise every layer and print a table of checks; exits 1 if any fails.
    Selftest {
        /// One JSON object per check instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run benchmarks on the current backend.
    Bench {
        #[command(subcommand)]
        kind: BenchKind,
    },
    /// Run a tensor-parallel Llama-style decoder on the backend's devices and show tokens/s and where
    /// the time goes (the same code as examples/tp_decode.rs).
    Demo {
        /// Tensor-parallel size: 1, 2 or 4 (devices, one thread each).
        #[arg(long, default_value_t = 2)]
        tp: usize,
        /// Sequences in the batch (prompts of 5..64 tokens).
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Tokens to generate per sequence (some stop earlier: continuous batching).
        #[arg(long, default_value_t = 32)]
        tokens: usize,
        /// The small test model instead of the ~60 M-parameter demo model.
        #[arg(long)]
        tiny: bool,
    },
    /// A rank process of `bench collectives --processes` (reads commands on stdin).
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        rank: usize,
        #[arg(long)]
        ranks: usize,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// A quick sweep of every benchmark (limits, runtime, collectives, matmul, attention), each figure
    /// next to the limit that bounds it and the fraction of it reached (the read limit is measured
    /// around each bandwidth-bound figure, the others at the start).
    All {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Time of one timed run, in milliseconds; a figure takes about five (iterations are calibrated
        /// until a run lasts this long, then the best of three more is kept).
        #[arg(long, default_value_t = 100)]
        budget_ms: u64,
    },
    /// Matmul GFLOPS at one shape (C = A·B, or A·Bᵀ with --transpose-b), or with no shape the default
    /// sweep (square 512..4096 and decode m = 1, 16 at n = k = 4096, each dtype), decode figures next
    /// to the streaming-read bandwidth measured around each of them (weights under 64 KiB excepted:
    /// caches would serve them).
    Matmul {
        /// Rows of A and C (with --n and --k: one shape instead of the sweep).
        #[arg(long, requires_all = ["n", "k"])]
        m: Option<usize>,
        /// Columns of B and C.
        #[arg(long, requires_all = ["m", "k"])]
        n: Option<usize>,
        /// Columns of A, rows of B (the reduced dimension).
        #[arg(long, requires_all = ["m", "n"])]
        k: Option<usize>,
        /// f32, f16 or bf16 (default: f32 for one shape, every dtype for the sweep).
        #[arg(long)]
        dtype: Option<String>,
        /// B is stored [n, k] (linear-layer weights); needs --m/--n/--k (the sweep's decode shapes
        /// already use it).
        #[arg(long, requires = "m")]
        transpose_b: bool,
        /// Force a SIMD level: portable, avx2, avx512, avx512bf16 or amx (default: ASCEND_KERNELS_LEVEL
        /// if set, else the fastest this CPU has).
        #[arg(long)]
        level: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Time of one timed run, in milliseconds; a figure takes about five (iterations are calibrated
        /// until a run lasts this long, then the best of three more is kept).
        #[arg(long, default_value_t = 300)]
        budget_ms: u64,
    },
    /// Attention: causal prefill GFLOPS and paged decode GB/s of K/V read, at one shape or (with no
    /// shape) the default sweep; decode figures next to the streaming-read bandwidth measured around
    /// each of them.
    Attention {
        #[command(subcommand)]
        shape: Option<AttentionShape>,
        /// f32, f16 or bf16 (default: f32 and bf16 for the sweep; f32 for one shape).
        #[arg(long, global = true)]
        dtype: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long, global = true)]
        json: bool,
        /// Time of one timed run, in milliseconds; a figure takes about five (iterations are calibrated
        /// until a run lasts this long, then the best of three more is kept).
        #[arg(long, global = true, default_value_t = 300)]
        budget_ms: u64,
    },
    /// All-reduce latency and bus bandwidth (busbw = algbw · 2(n−1)/n), ranks in threads or processes.
    Collectives {
        /// Number of ranks (rank r uses device r).
        #[arg(long, default_value_t = 2)]
        ranks: usize,
        /// Message sizes in bytes, comma-separated (default 4 KiB, 1 MiB, 16 MiB, 64 MiB, 256 MiB).
        #[arg(long, value_delimiter = ',')]
        bytes: Vec<usize>,
        /// Run each rank in its own process (default: threads of this process).
        #[arg(long)]
        processes: bool,
        /// Element type: f32, bf16, f16 or i32.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Time of one timed run, in milliseconds; a figure takes about five (iterations are calibrated
        /// until a run lasts this long, then the best of three more is kept).
        #[arg(long, default_value_t = 200)]
        budget_ms: u64,
    },
    /// Launch rate, launch + synchronize round trip, event record + query, copy bandwidth.
    Runtime {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Device to measure.
        #[arg(long, default_value_t = 0)]
        device: usize,
        /// Time of one timed run, in milliseconds; a figure takes about five (iterations are calibrated
        /// until a run lasts this long, then the best of three more is kept).
        #[arg(long, default_value_t = 100)]
        budget_ms: u64,
        /// Copy sizes in bytes, comma-separated (default 4 KiB .. 256 MiB).
        #[arg(long, value_delimiter = ',')]
        bytes: Vec<usize>,
    },
}

#[derive(Subcommand)]
enum AttentionShape {
    /// Causal prefill of one sequence.
    Prefill {
        /// Tokens in the sequence.
        #[arg(long)]
        seq: usize,
        /// Query heads.
        #[arg(long, default_value_t = 32)]
        heads: usize,
        /// Key/value heads (must divide --heads).
        #[arg(long, default_value_t = 8)]
        kv_heads: usize,
        /// Elements per head.
        #[arg(long, default_value_t = 128)]
        head_dim: usize,
    },
    /// One paged decode step.
    Decode {
        /// Sequences, one query token each.
        #[arg(long)]
        batch: usize,
        /// Tokens already cached per sequence.
        #[arg(long)]
        context: usize,
        /// Query heads.
        #[arg(long, default_value_t = 32)]
        heads: usize,
        /// Key/value heads (must divide --heads).
        #[arg(long, default_value_t = 8)]
        kv_heads: usize,
        /// Elements per head.
        #[arg(long, default_value_t = 128)]
        head_dim: usize,
        /// Tokens per cache block.
        #[arg(long, default_value_t = 16)]
        block_size: usize,
    },
}

fn main() -> ExitCode {
    // Output piped into `head` or a closed pipe ends the program quietly, as for other Unix tools
    // (Rust ignores SIGPIPE, and every print would panic on the broken pipe instead).
    // SAFETY: restoring a signal's default action, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match Args::parse().command {
        Command::Info { json } => {
            let v = cli::info::gather();
            if json {
                println!("{v}");
            } else {
                cli::info::print_text(&v);
            }
            if v.get("error").is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Selftest { json } => {
            let checks = cli::selftest::run();
            let failed = checks.iter().filter(|c| c.result.is_err()).count();
            if json {
                for c in &checks {
                    let (ok, detail) = match &c.result {
                        Ok(d) => (true, d),
                        Err(d) => (false, d),
                    };
                    println!(
                        "{}",
                        serde_json::json!({ "layer": c.layer, "check": c.name, "ok": ok, "detail": detail })
                    );
                }
            } else {
                let rows: Vec<Vec<String>> = checks
                    .iter()
                    .map(|c| {
                        // The first line only: a backend error lists every path it tried.
                        let (status, detail) = match &c.result {
                            Ok(d) => ("ok", d.lines().next().unwrap_or_default().to_string()),
                            Err(d) => ("FAIL", d.lines().next().unwrap_or_default().to_string()),
                        };
                        vec![c.layer.to_string(), c.name.to_string(), status.to_string(), detail]
                    })
                    .collect();
                println!("{}", cli::table::render(&["layer", "check", "result", "detail"], &rows));
                println!("{} checks, {} failed", checks.len(), failed);
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Bench { kind: BenchKind::Matmul { m, n, k, dtype, transpose_b, level, json, budget_ms } } => {
            let level = match level.as_deref().map(ascend::kernels::cpu::Level::parse) {
                Some(None) => {
                    eprintln!("error: --level must be portable, avx2, avx512, avx512bf16 or amx");
                    return ExitCode::from(2);
                }
                other => other.flatten(),
            };
            let Some(dtypes) = dtypes_arg(dtype.as_deref(), m.is_some(), &ascend::bench::DTYPES) else {
                return ExitCode::from(2);
            };
            let shapes = match (m, n, k) {
                (Some(m), Some(n), Some(k)) if m > 0 && n > 0 && k > 0 => {
                    let shape = ascend::kernels::Shape::new(m, n, k);
                    vec![if transpose_b { shape.transposed_b() } else { shape }]
                }
                (Some(_), _, _) => {
                    eprintln!("error: --m, --n and --k must be at least 1");
                    return ExitCode::from(2);
                }
                _ => ascend::bench::matmul::default_shapes(),
            };
            let budget = Duration::from_millis(budget_ms.max(1));
            report(
                cli::bench::with_progress(json, |p| ascend::bench::matmul::sweep(&shapes, &dtypes, level, budget, p)),
                json,
            )
        }
        Command::Bench { kind: BenchKind::All { json, budget_ms } } => {
            let budget = Duration::from_millis(budget_ms.max(1));
            report(cli::bench::with_progress(json, |p| ascend::bench::all::quick(budget, p)), json)
        }
        Command::Bench { kind: BenchKind::Attention { shape, dtype, json, budget_ms } } => {
            use ascend::bench::attention::{self as att, Workload};
            use ascend::kernels::Heads;
            let Some(dtypes) = dtypes_arg(dtype.as_deref(), shape.is_some(), &["f32", "bf16"]) else {
                return ExitCode::from(2);
            };
            let (work, heads) = match shape {
                None => (att::default_workloads(), att::DEFAULT_HEADS),
                Some(AttentionShape::Prefill { seq, heads, kv_heads, head_dim }) => {
                    (vec![Workload::Prefill { seq }], Heads::new(heads, kv_heads, head_dim))
                }
                Some(AttentionShape::Decode { batch, context, heads, kv_heads, head_dim, block_size }) => {
                    (vec![Workload::Decode { batch, context, block_size }], Heads::new(heads, kv_heads, head_dim))
                }
            };
            let zero = [heads.heads, heads.kv_heads, heads.head_dim].contains(&0)
                || work.iter().any(|w| match *w {
                    Workload::Prefill { seq } => seq == 0,
                    Workload::Decode { batch, context, block_size } => batch == 0 || context == 0 || block_size == 0,
                });
            if zero {
                eprintln!("error: every size must be at least 1");
                return ExitCode::from(2);
            }
            let budget = Duration::from_millis(budget_ms.max(1));
            report(cli::bench::with_progress(json, |p| att::sweep(&work, heads, &dtypes, budget, p)), json)
        }
        Command::Demo { tp, batch, tokens, tiny } => {
            use ascend::demo::{check, check_batch, run, sample_requests, Config};
            if batch == 0 || tokens == 0 || tp == 0 {
                eprintln!("error: --tp, --batch and --tokens must be at least 1");
                return ExitCode::from(2);
            }
            let cfg = if tiny { Config::tiny() } else { Config::demo() };
            // The batch first: it bounds the requests built for the other checks.
            let checked = check_batch(&cfg, batch).and_then(|()| {
                let requests = sample_requests(&cfg, batch, tokens);
                check(&cfg, tp, &requests).map(|()| requests)
            });
            let requests = match checked {
                Ok(r) => r,
                Err(e) => return failure(&e),
            };
            eprintln!("generating weights and running {batch} sequences on {tp} device(s) ...");
            match run(cfg, tp, &requests, false) {
                Ok(out) => {
                    print!("{}", out.summary(tp));
                    ExitCode::SUCCESS
                }
                Err(e) => failure(&e),
            }
        }
        Command::BenchWorker { rank, ranks } => match ascend::bench::collectives::worker(rank, ranks) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-worker {rank}: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Bench { kind: BenchKind::Collectives { ranks, bytes, processes, dtype, json, budget_ms } } => {
            let sizes = if bytes.is_empty() { vec![4 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20] } else { bytes };
            let dtypes = ascend::bench::collectives::DTYPES;
            let elem = ascend::bench::collectives::element_bytes(&dtype);
            let bad = if !(1..=64).contains(&ranks) {
                Some(format!("--ranks {ranks} is outside 1..=64"))
            } else if let Some(e) = elem {
                sizes
                    .iter()
                    .find(|&&b| b == 0 || b > 1 << 32 || b % e != 0)
                    .map(|b| format!("--bytes {b} is not 1..=4 GiB in whole {dtype} elements ({e} bytes each)"))
            } else {
                Some(format!("--dtype {dtype:?} is not one of {dtypes:?}"))
            };
            if let Some(m) = bad {
                eprintln!("error: {m}");
                return ExitCode::from(2);
            }
            let budget = Duration::from_millis(budget_ms.max(1));
            report(cli::bench::run_collectives(ranks, &sizes, processes, &dtype, budget, json), json)
        }
        Command::Bench { kind: BenchKind::Runtime { json, device, budget_ms, bytes } } => {
            let sizes = if bytes.is_empty() { ascend::bench::runtime::COPY_SIZES.to_vec() } else { bytes };
            if let Some(bad) = sizes.iter().find(|&&b| b == 0 || b > 1 << 34) {
                eprintln!("error: --bytes {bad} is outside 1..=16 GiB");
                return ExitCode::from(2);
            }
            let budget = Duration::from_millis(budget_ms.max(1));
            report(cli::bench::with_progress(json, |p| ascend::bench::runtime::sweep(device, budget, &sizes, p)), json)
        }
    }
}

/// The element types to measure: the one asked for, else f32 for a single shape or `sweep` for the
/// default sweep. None (after saying why) for a type the benchmarks do not know.
fn dtypes_arg<'a>(dtype: Option<&'a str>, one_shape: bool, sweep: &[&'a str]) -> Option<Vec<&'a str>> {
    match dtype {
        Some(d) if !ascend::bench::DTYPES.contains(&d) => {
            eprintln!("error: --dtype must be one of {:?}", ascend::bench::DTYPES);
            None
        }
        Some(d) => Some(vec![d]),
        None if one_shape => Some(vec!["f32"]),
        None => Some(sweep.to_vec()),
    }
}

/// Prints a benchmark's figures, or its error.
fn report(result: ascend::rt::Result<Vec<ascend::bench::Figure>>, json: bool) -> ExitCode {
    match result {
        Ok(f) => {
            cli::bench::print(&f, json);
            ExitCode::SUCCESS
        }
        Err(e) => failure(&e),
    }
}

/// Says what went wrong; exits 2 for arguments refused (as for those the parser refuses), else 1.
fn failure(e: &ascend::rt::Error) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        ascend::rt::Error::InvalidArgument(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}
