//! A Llama-style decoder, tensor-parallel over simulated devices (one thread each): prefill a batch
//! of prompts of different lengths, then decode with continuous batching, and print tokens per
//! second and where the time went. `cargo run --release --example tp_decode -- [TP] [BATCH] [TOKENS]`
//! (defaults 2, 8, 32); `ascend demo --tp N` runs the same code.

use ascend::demo::{run, sample_requests, Config};

fn main() {
    let args: Vec<usize> = match std::env::args().skip(1).map(|a| a.parse()).collect() {
        Ok(args) => args,
        Err(_) => {
            eprintln!("usage: tp_decode [TP] [BATCH] [TOKENS]   (positive numbers; defaults 2, 8, 32)");
            std::process::exit(2);
        }
    };
    let (tp, batch, tokens) =
        (args.first().copied().unwrap_or(2), args.get(1).copied().unwrap_or(8), args.get(2).copied().unwrap_or(32));
    let cfg = Config::demo();
    match run(cfg, tp, &sample_requests(&cfg, batch, tokens), false) {
        Ok(out) => print!("{}", out.summary(tp)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
