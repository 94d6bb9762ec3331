//! The `ascend` tool as a user runs it: exit codes and machine-readable output.

use serde_json::Value;
use std::process::Command;

fn ascend(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ascend")).args(args).env("ASCEND_BACKEND", "sim").output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[test]
fn info_reports_the_simulator_and_its_devices() {
    let (ok, out) = ascend(&["info", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["backend"], "sim");
    assert_eq!(v["reason"], "ASCEND_BACKEND=sim");
    assert_eq!(v["devices"].as_array().unwrap().len(), v["simulator"]["visible"].as_array().unwrap().len());
    assert_eq!(v["devices"][0]["soc"], "Ascend910B3");
}

#[test]
fn selftest_passes_every_check() {
    let (ok, out) = ascend(&["selftest", "--json"]);
    let checks = json_lines(&out);
    assert!(checks.len() >= 8);
    for c in &checks {
        assert_eq!(c["ok"], true, "{c}");
    }
    assert!(ok);
}

#[test]
fn selftest_fails_with_exit_code_1_when_the_backend_is_unusable() {
    let out = Command::new(env!("CARGO_BIN_EXE_ascend"))
        .args(["selftest"])
        .env("ASCEND_BACKEND", "nonsense")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
}

#[test]
fn bench_runtime_json_has_one_figure_per_line() {
    let (ok, out) = ascend(&["bench", "runtime", "--json", "--budget-ms", "2", "--bytes", "4096,65536"]);
    assert!(ok);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4 + 2 * 3, "{out}");
    for l in &lines {
        let name = l["name"].as_str().unwrap();
        let unit = if name == "runtime.copy" { "gbps" } else { "us" };
        assert!(l[unit].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!(l["backend"], "sim");
    }
    assert!(lines.iter().any(|l| l["direction"] == "d2d" && l["bytes"] == 65536));
    assert!(lines.iter().any(|l| l["name"] == "runtime.drop_queued" && l["queue"] == 4096), "{out}");
    let (ok, _) = ascend(&["bench", "runtime", "--bytes", "0"]);
    assert!(!ok, "a zero size is rejected");
}

#[test]
fn bench_collectives_json_in_threads_and_processes() {
    for mode in [&[][..], &["--processes"][..]] {
        let mut args =
            vec!["bench", "collectives", "--ranks", "2", "--bytes", "4096,2000000", "--json", "--budget-ms", "5"];
        args.extend_from_slice(mode);
        let (ok, out) = ascend(&args);
        assert!(ok, "{args:?}");
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 2 * 3, "{out}");
        for l in &lines {
            let unit = if l["name"].as_str().unwrap().ends_with("latency") { "us" } else { "gbps" };
            assert!(l[unit].as_f64().unwrap() > 0.0, "{l}");
            assert_eq!(l["ranks"], 2);
        }
    }
    // busbw = algbw · 2(n−1)/n: 4/3 for 3 ranks.
    let (ok, out) = ascend(&["bench", "collectives", "--ranks", "3", "--bytes", "65536", "--json", "--budget-ms", "5"]);
    assert!(ok, "{out}");
    let lines = json_lines(&out);
    let get = |name: &str| lines.iter().find(|l| l["name"] == name).unwrap()["gbps"].as_f64().unwrap();
    let (bus, alg) = (get("collectives.all_reduce.busbw"), get("collectives.all_reduce.algbw"));
    assert!((bus - alg * 4.0 / 3.0).abs() <= 1e-9 * bus, "busbw {bus} vs algbw {alg}");
    let (ok, _) = ascend(&["bench", "collectives", "--dtype", "u128"]);
    assert!(!ok, "an unknown dtype is rejected");
}

#[test]
fn bench_all_json_puts_each_figure_next_to_its_limit() {
    // A short budget keeps the test quick; the default sweep takes about 10 s here.
    let t = std::time::Instant::now();
    let (ok, out) = ascend(&["bench", "all", "--json", "--budget-ms", "5"]);
    assert!(ok, "{out}");
    // Only a guard against a hang (a loaded 2-core machine can be several times slower).
    assert!(t.elapsed() < std::time::Duration::from_secs(300), "bench all took {:?}", t.elapsed());
    let figures = json_lines(&out);
    let names: Vec<&str> = figures.iter().map(|f| f["name"].as_str().unwrap()).collect();
    for want in
        ["limits.read", "limits.copy", "limits.fma_peak", "runtime.copy", "kernels.matmul", "kernels.attention.decode"]
    {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let limit_names: Vec<&str> = names.iter().copied().filter(|n| n.starts_with("limits.")).collect();
    let mut with_limit = 0;
    for f in &figures {
        if let Some(limit) = f["limit"].as_str() {
            with_limit += 1;
            assert!(limit_names.contains(&limit.trim_end_matches("(bf16)")), "{f}");
            let (v, l, frac) = (figure_value(f), f["limit_value"].as_f64().unwrap(), f["fraction"].as_f64().unwrap());
            assert!(v > 0.0 && l > 0.0 && frac > 0.0, "{f}");
        }
    }
    assert!(with_limit >= 6, "only {with_limit} figures carry a limit");
}

#[test]
fn bench_attention_prefill_alone_skips_the_read_probe() {
    let args =
        "bench attention prefill --seq 40 --heads 4 --kv-heads 2 --head-dim 64 --dtype bf16 --json --budget-ms 2";
    let (ok, out) = ascend(&args.split_whitespace().collect::<Vec<_>>());
    assert!(ok, "{out}");
    let figures = json_lines(&out);
    let names: Vec<&str> = figures.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["kernels.attention.prefill"]);
    assert!(figures[0]["gflops"].as_f64().unwrap() > 0.0, "{}", figures[0]);
}

#[test]
fn bench_attention_decode_is_compared_with_the_read_limit_around_it() {
    let args = "bench attention decode --batch 3 --context 100 --block-size 16 --heads 8 --kv-heads 2 --head-dim 64 \
                --dtype bf16 --json --budget-ms 2";
    let (ok, out) = ascend(&args.split_whitespace().collect::<Vec<_>>());
    assert!(ok, "{out}");
    let figures = json_lines(&out);
    let names: Vec<&str> = figures.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["limits.read", "kernels.attention.decode"]);
    let d = &figures[1];
    let (gbps, read, frac) =
        (d["gbps"].as_f64().unwrap(), d["read_gbps"].as_f64().unwrap(), d["read_fraction"].as_f64().unwrap());
    assert!(gbps > 0.0 && read > 0.0, "{d}");
    assert!((frac - gbps / read).abs() <= 1e-9 * frac, "{d}");
    let (ok, _) = ascend(&["bench", "attention", "decode", "--batch", "0", "--context", "8"]);
    assert!(!ok, "a zero batch is refused");
}

/// The value of a figure (`value`, which its unit keys too).
fn figure_value(f: &Value) -> f64 {
    let v = f["value"].as_f64().unwrap();
    assert_eq!(f[f["unit"].as_str().unwrap()].as_f64(), Some(v), "keyed by its unit too: {f}");
    v
}

#[test]
fn demo_runs_the_tp_decoder_and_reports_throughput() {
    let (ok, out) = ascend(&["demo", "--tp", "2", "--tiny", "--batch", "3", "--tokens", "4"]);
    assert!(ok, "{out}");
    assert!(out.contains("tokens/s") && out.contains("all_reduce") && out.contains("matmul"), "{out}");
    // One token each comes from prefill: no decode step, and no "0.0 tokens/s" quoted for it.
    let (ok, out) = ascend(&["demo", "--tp", "1", "--tiny", "--batch", "2", "--tokens", "1"]);
    assert!(ok && out.contains("no decode step") && !out.contains("tokens/s"), "{out}");
    let (ok, _) = ascend(&["demo", "--tp", "3", "--tiny"]);
    assert!(!ok, "TP 3 cannot shard the tiny model");
}

/// Arguments refused after parsing exit 2, like those the parser refuses, and before any work
/// starts or is announced.
#[test]
fn refused_arguments_exit_2() {
    for args in [
        "demo --tiny --tp 3",
        "demo --tiny --batch 65",
        "bench attention prefill --seq 16 --heads 4 --kv-heads 3",
        "bench collectives --ranks 65",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ascend")).args(args.split(' ')).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args}: {err}");
        assert!(err.starts_with("error: ") && !err.contains("generating"), "{args}: {err:?}");
    }
}

/// Output piped into a reader that has gone (`| head`) ends the program quietly, without a panic.
#[test]
fn a_closed_pipe_ends_the_program_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ascend"))
        .args(["selftest"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {err}", out.status);
}

/// Cases that cannot run are refused at once, with the reason, before anything is allocated or
/// any rank waits for another.
#[test]
fn bench_refuses_what_cannot_run() {
    let refused_with = |env: &[(&str, &str)], args: &str, why: &str| {
        let t = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_ascend"))
            .args(args.split(' '))
            .env("ASCEND_BACKEND", "sim")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{args}: {err}");
        // Captured stderr is no terminal: no progress line, no control codes before the error.
        assert!(err.starts_with("error: "), "{args}: {err:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "{args} took {:?}", t.elapsed());
        // Refused before the read probe (256 MiB and seconds) of a sweep with decode cases.
        assert!(!err.contains("limits.read"), "{args} measured the read limit before refusing: {err}");
    };
    let refused = |args: &str, why: &str| refused_with(&[], args, why);
    refused("bench matmul --m 100000 --n 100000 --k 100000", "bytes) of memory");
    refused("bench matmul --m 18446744073709551615 --n 2 --k 2", "overflow");
    refused("bench attention decode --batch 100000 --context 100000 --block-size 16", "bytes) of memory");
    refused("bench collectives --ranks 9 --processes", "9 ranks need 9 devices");
    refused("bench collectives --bytes 6 --dtype f32", "--bytes 6 is not 1..=4 GiB in whole f32 elements");
    refused("bench collectives --ranks 65", "--ranks 65 is outside 1..=64");
    refused("bench collectives --dtype u8", "--dtype \"u8\" is not one of");
    refused("bench attention decode --batch 1 --context 16 --heads 0", "every size must be at least 1");
    refused("bench matmul --transpose-b", "required arguments were not provided");
    refused("demo --tp 0 --tiny", "--tp, --batch and --tokens must be at least 1");
    // Decode cases are checked before the read probe: memory, and heads the kernel cannot group.
    refused("bench matmul --m 1 --n 4000000 --k 4000000", "bytes) of memory");
    refused(
        "bench attention decode --batch 1 --context 16 --heads 32 --kv-heads 5",
        "32 query heads are not a multiple of 5 key/value heads",
    );
    // Copy and all-reduce buffers are checked too, before anything is measured or any rank starts:
    // a pinned and two device buffers of 16 GiB (48 GiB) exceed any simulated device (32 GiB), and
    // a rank's 2 GiB buffer exceeds devices of 1 GiB.
    refused("bench runtime --bytes 17179869184", "bytes) of memory");
    refused_with(
        &[("ASCEND_SIM_HBM_BYTES", "1G")],
        "bench collectives --ranks 2 --bytes 2147483648",
        "bytes) of memory",
    );
    // More sequences than KV blocks: refused before the requests are built (a billion of them
    // aborted); the sample requests' generation lengths do not overflow.
    refused("demo --tiny --batch 1000000000", "each needs at least one of the 64 blocks");
    refused("demo --tiny --batch 64 --tokens 100000", "at their peak");
    refused("demo --tiny --batch 4 --tokens 7000000000000000000", "at their peak");
}
