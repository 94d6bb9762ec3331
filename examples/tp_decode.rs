//! A Llama-style decoder, tensor-parallel over simulated devices (one thread each): prefill a batch
//! of prompts of different lengths, then decode with continuous batching, and print tokens per
//! second and where the time went. `cargo run --release --example tp_decode -- [TP] [BATCH] [TOKENS]`
//! (defaults 2, 8, 32); `ascend demo --tp N` runs the same code.

use ascend::demo::{check_batch, example_args, run, sample_requests, Config};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((tp, batch, tokens)) = example_args(&args) else {
        eprintln!("usage: tp_decode [TP] [BATCH] [TOKENS]   (numbers of at least 1; defaults 2, 8, 32)");
        std::process::exit(2);
    };
    let cfg = Config::demo();
    match check_batch(&cfg, batch).and_then(|()| run(cfg, tp, &sample_requests(&cfg, batch, tokens), false)) {
        Ok(out) => print!("{}", out.summary(tp)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
