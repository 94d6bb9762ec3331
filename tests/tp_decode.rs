//! The tensor-parallel decoder: TP = 2 and 4 compute the same function as TP = 1, and every cache
//! block comes back when all sequences have finished.
//!
//! Tolerance: TP changes only the order of f32 sums (each rank reduces its shard of every row-parallel
//! product, then the shards are added by all_reduce). Each logit is a chain of a few such sums of at
//! most `inter` = 256 terms per layer; reordering a sum of n terms moves it by at most about
//! 2·n·2⁻²⁴ of the sum of magnitudes (γₙ), about 3·10⁻⁵ here, compounded over two layers and the
//! norms. We allow 10⁻³ of max(1, |logit|): a wrong shard or a missing all_reduce moves logits by
//! O(0.1–1).

use ascend::demo::{example_args, run, sample_requests, Config, Request};

fn requests() -> Vec<Request> {
    let cfg = Config::tiny();
    // Prompt lengths 5, 42, 19, 56, 33 (several cross block boundaries), generation lengths 6, 6, 5, 4, 6.
    sample_requests(&cfg, 5, 6)
}

#[test]
fn tp_2_and_4_match_tp_1() {
    let cfg = Config::tiny();
    let reqs = requests();
    let base = run(cfg, 1, &reqs, true).unwrap();
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(base.tokens[i].len(), r.max_new_tokens, "request {i} generated the wrong number of tokens");
    }
    for tp in [2, 4] {
        let out = run(cfg, tp, &reqs, true).unwrap();
        assert_eq!(out.tokens, base.tokens, "TP {tp}: greedy tokens differ from TP 1");
        for (i, (a, b)) in out.logits.iter().zip(&base.logits).enumerate() {
            assert_eq!(a.len(), b.len());
            for (s, (x, y)) in a.iter().zip(b).enumerate() {
                for (v, (p, q)) in x.iter().zip(y).enumerate() {
                    let tol = 1e-3 * q.abs().max(1.0);
                    assert!((p - q).abs() <= tol, "TP {tp}, request {i}, step {s}, logit {v}: {p} vs {q}");
                }
            }
        }
    }
}

#[test]
fn every_cache_block_returns_when_all_sequences_finish() {
    let cfg = Config::tiny();
    for tp in [1, 2] {
        let out = run(cfg, tp, &requests(), false).unwrap();
        assert_eq!(out.blocks_free.0, out.blocks_free.1, "TP {tp}: blocks leaked");
        assert!(out.decode_tokens > 0);
    }
}

#[test]
fn bad_setups_are_refused() {
    let cfg = Config::tiny();
    assert!(run(cfg, 3, &requests(), false).is_err(), "TP 3 does not divide 8 heads / 4 KV heads");
    let empty = vec![Request { prompt: vec![], max_new_tokens: 2 }];
    assert!(run(cfg, 1, &empty, false).is_err());
    // A cache too small for the prompts is an error, not a hang or a crash.
    let small = Config { blocks: 2, ..cfg };
    let e = run(small, 1, &requests(), false).unwrap_err();
    assert!(e.to_string().contains("out of KV cache blocks"), "{e}");
    // Refused before any work when decode would run out, and exactly then: 4 blocks of 16 tokens
    // hold a 10-token prompt and 54 more cached tokens (55 generated, the last never cached).
    let four = Config { blocks: 4, ..cfg };
    let one = |new| vec![Request { prompt: (0..10).collect(), max_new_tokens: new }];
    assert!(run(four, 1, &one(55), false).is_ok());
    let e = run(four, 1, &one(56), false).unwrap_err();
    assert!(e.to_string().contains("at their peak"), "{e}");
}

/// Decoding with the paged cache computes what recomputing from scratch computes: for each step s of
/// each request, a fresh run over prompt + the first s generated tokens (one prefill, in a larger cache
/// laid out differently) chooses the token the incremental run chose at step s, from the same logits
/// (within the tolerance above: prefill and decode sum in different orders).
#[test]
fn incremental_decoding_matches_recomputing() {
    let cfg = Config::tiny();
    let reqs = requests();
    let base = run(cfg, 1, &reqs, true).unwrap();
    let mut again = Vec::new();
    let mut at = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        for s in 1..base.tokens[i].len() {
            let prompt = [&r.prompt[..], &base.tokens[i][..s]].concat();
            again.push(Request { prompt, max_new_tokens: 1 });
            at.push((i, s));
        }
    }
    let fresh = run(Config { blocks: 256, ..cfg }, 1, &again, true).unwrap();
    for (j, &(i, s)) in at.iter().enumerate() {
        assert_eq!(fresh.tokens[j], [base.tokens[i][s]], "request {i}, step {s}: recomputing chose another token");
        for (v, (p, q)) in fresh.logits[j][0].iter().zip(&base.logits[i][s]).enumerate() {
            let tol = 1e-3 * q.abs().max(1.0);
            assert!((p - q).abs() <= tol, "request {i}, step {s}, logit {v}: {p} recomputed vs {q} decoded");
        }
    }
    assert_eq!(at.len(), 5 + 5 + 4 + 3 + 5);
}

#[test]
fn the_example_refuses_what_the_cli_refuses() {
    assert_eq!(example_args::<&str>(&[]), Some((2, 8, 32)));
    assert_eq!(example_args(&["4", "3"]), Some((4, 3, 32)));
    for bad in [&["2", "8", "0"][..], &["2", "0"][..], &["0"][..], &["x"][..], &["1", "2", "3", "4"][..]] {
        assert_eq!(example_args(bad), None, "{bad:?} is refused");
    }
}
