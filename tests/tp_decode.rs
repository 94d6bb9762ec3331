//! The tensor-parallel decoder: TP = 2 and 4 compute the same function as TP = 1, and every cache
//! block comes back when all sequences have finished.
//!
//! Tolerance: TP changes only the order of f32 sums (each rank reduces its shard of every row-parallel
//! product, then the shards are added by all_reduce). Each logit is a chain of a few such sums of at
//! most `inter` = 256 terms per layer; reordering a sum of n terms moves it by at most about
//! 2·n·2⁻²⁴ of the sum of magnitudes (γₙ), about 3·10⁻⁵ here, compounded over two layers and the
//! norms. We allow 10⁻³ of max(1, |logit|): a wrong shard or a missing all_reduce moves logits by
//! O(0.1–1).

use ascend::demo::{example_args, init, run, sample_requests, Config, Request};

/// The model computed plainly in f64 from its definition (the weights of [`init`]): the logits of
/// the last of `tokens`, every position recomputed from scratch.
fn reference_logits(c: &Config, tokens: &[i32]) -> Vec<f64> {
    let (h, d, n) = (c.hidden, c.head_dim, tokens.len());
    let w = |layer, name, len, scale: f32| init(c.seed, layer, name, len, scale).into_iter().map(f64::from).collect();
    let s = 1.0 / (h as f32).sqrt();
    // y[t] = x[t] · wᵀ for w `[out, inp]`.
    let linear = |x: &[Vec<f64>], w: &Vec<f64>, out: usize| -> Vec<Vec<f64>> {
        x.iter()
            .map(|r| (0..out).map(|o| r.iter().zip(&w[o * r.len()..]).map(|(a, b)| a * b).sum()).collect())
            .collect()
    };
    let norm = |x: &[Vec<f64>]| -> Vec<Vec<f64>> {
        x.iter()
            .map(|r| {
                let inv = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64 + c.eps as f64).sqrt();
                r.iter().map(|v| v * inv).collect()
            })
            .collect()
    };
    // NeoX rotary: pairs (i, i + d/2) of each head turn by pos · theta^(−2i/d).
    let rotate = |x: &mut [Vec<f64>], heads: usize| {
        for (pos, row) in x.iter_mut().enumerate() {
            for hd in 0..heads {
                for i in 0..d / 2 {
                    let a = pos as f64 * (c.rope_theta as f64).powf(-2.0 * i as f64 / d as f64);
                    let (x0, x1) = (row[hd * d + i], row[hd * d + i + d / 2]);
                    row[hd * d + i] = x0 * a.cos() - x1 * a.sin();
                    row[hd * d + i + d / 2] = x1 * a.cos() + x0 * a.sin();
                }
            }
        }
    };
    let embed: Vec<f64> = w(1000, 8, c.vocab * h, 1.0);
    let mut x: Vec<Vec<f64>> = tokens.iter().map(|&t| embed[t as usize * h..(t as usize + 1) * h].to_vec()).collect();
    for l in 0..c.layers {
        let hn = norm(&x);
        let mut q = linear(&hn, &w(l, 1, c.heads * d * h, s), c.heads * d);
        let mut k = linear(&hn, &w(l, 2, c.kv_heads * d * h, s), c.kv_heads * d);
        let v = linear(&hn, &w(l, 3, c.kv_heads * d * h, s), c.kv_heads * d);
        rotate(&mut q, c.heads);
        rotate(&mut k, c.kv_heads);
        // Causal attention, query head hd reading KV head hd / (heads / kv_heads), scale 1/√d.
        let mut attn = vec![vec![0.0; c.heads * d]; n];
        for (t, out) in attn.iter_mut().enumerate() {
            for hd in 0..c.heads {
                let kv = hd / (c.heads / c.kv_heads);
                let dot =
                    |j: usize| (0..d).map(|i| q[t][hd * d + i] * k[j][kv * d + i]).sum::<f64>() / (d as f64).sqrt();
                let scores: Vec<f64> = (0..=t).map(dot).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = p.iter().sum();
                for i in 0..d {
                    out[hd * d + i] = (0..=t).map(|j| p[j] * v[j][kv * d + i]).sum::<f64>() / sum;
                }
            }
        }
        let o = linear(&attn, &w(l, 4, h * c.heads * d, s), h);
        x.iter_mut().zip(&o).for_each(|(x, o)| x.iter_mut().zip(o).for_each(|(a, b)| *a += b));
        let hn = norm(&x);
        let gate = linear(&hn, &w(l, 5, c.inter * h, s), c.inter);
        let up = linear(&hn, &w(l, 6, c.inter * h, s), c.inter);
        let act: Vec<Vec<f64>> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g.iter().zip(u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect())
            .collect();
        let down = linear(&act, &w(l, 7, h * c.inter, 1.0 / (c.inter as f32).sqrt()), h);
        x.iter_mut().zip(&down).for_each(|(x, o)| x.iter_mut().zip(o).for_each(|(a, b)| *a += b));
    }
    let last = norm(&x[n - 1..]);
    linear(&last, &w(1000, 9, c.vocab * h, s), c.vocab).remove(0)
}

/// The decoder's logits (TP 1 and 2) match the plain f64 model at every generated token, so the
/// decoder computes the model it claims (rotary, GQA, SwiGLU, norms, cache), not only the same
/// thing at every TP. Tolerance: f32 sums of at most `inter` = 256 terms per product, γₙ·Σ|terms|
/// ≈ 3·10⁻⁵ relative, through two layers and the norms; 10⁻³ of max(1, |logit|) as above, while a
/// wrong rotation, scale or gate order moves logits by O(0.1–1).
#[test]
fn logits_match_a_plain_f64_model() {
    let cfg = Config::tiny();
    // Two prompts, one crossing a block boundary, decoded across another.
    let reqs = vec![
        Request { prompt: vec![3, 141, 59, 26, 5], max_new_tokens: 4 },
        Request { prompt: (0..14).map(|i| (i * 37 + 11) % 512).collect(), max_new_tokens: 5 },
    ];
    for tp in [1, 2] {
        let out = run(cfg, tp, &reqs, true).unwrap();
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(out.logits[i].len(), r.max_new_tokens, "TP {tp}, request {i}");
            for (step, got) in out.logits[i].iter().enumerate() {
                let tokens = [&r.prompt[..], &out.tokens[i][..step]].concat();
                let want = reference_logits(&cfg, &tokens);
                for (v, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-3 * w.abs().max(1.0);
                    assert!((g as f64 - w).abs() <= tol, "TP {tp}, request {i}, step {step}, logit {v}: {g} vs {w}");
                }
            }
        }
    }
}

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
    // Models the decoder cannot run are refused by the check, before any weight is built.
    for bad in
        [Config { block_size: 0, ..cfg }, Config { vocab: 0, ..cfg }, Config { head_dim: 15, hidden: 120, ..cfg }]
    {
        let e = run(bad, 1, &one(2), false).unwrap_err();
        assert!(e.to_string().contains("even head size"), "{bad:?}: {e}");
    }
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
