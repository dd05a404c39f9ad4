//! SwiGLU on the GPU against the f64 reference, on a length that fills no workgroup evenly, with a and
//! b side by side in each row as the fused gate and up projection writes them.

mod common;

use ncalm::gpu::{KernelCache, Recorder};
use ncalm::ops::testing::*;
use ncalm::ops::{cat_columns, split_columns, swiglu};

#[test]
fn swiglu_forward_and_backward_match_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (rows, hidden) = (431, 7);
    let n = rows * hidden;
    let (a, b, dh) = (randn(n, 1), randn(n, 2), randn(n, 3));
    let gate_up = gpu.upload(&to_f32(&cat_columns(&[&a, &b], hidden)), "gate_up").unwrap();
    let gdh = gpu.upload(&to_f32(&dh), "dh").unwrap();
    let (h, d_gate_up) = (gpu.tensor(n, "h").unwrap(), gpu.tensor(2 * n, "d_gate_up").unwrap());
    let mut rec = Recorder::new(&gpu, &cache);
    swiglu::forward(&mut rec, &gate_up, &h, hidden as u32).unwrap();
    swiglu::backward(&mut rec, &gate_up, &gdh, &d_gate_up, hidden as u32).unwrap();
    rec.submit();
    let (rda, rdb) = swiglu::reference::backward(&a, &b, &dh);
    assert_close_f32(
        "swiglu forward",
        &gpu.read::<f32>(&h).unwrap(),
        &swiglu::reference::forward(&a, &b),
        1e-5,
    );
    let [da, db]: [Vec<f32>; 2] =
        split_columns(&gpu.read::<f32>(&d_gate_up).unwrap(), 2, hidden).try_into().unwrap();
    assert_close_f32("swiglu da", &da, &rda, 1e-5);
    assert_close_f32("swiglu db", &db, &rdb, 1e-5);
    // h must hold whole rows, and gate_up twice h.
    let mut rec = Recorder::new(&gpu, &cache);
    let err = swiglu::forward(&mut rec, &gate_up, &gpu.tensor(n - 1, "short").unwrap(), hidden as u32);
    assert!(err.is_err());
    let err = swiglu::forward(&mut rec, &h, &h, hidden as u32).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn batches_are_prepared_and_argmax_is_greedy() {
    use ncalm::ops::tokens;
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (seqs, seq_len, stride, masked) = (3usize, 37usize, 41usize, 5usize);
    let source = randint(seqs * stride, 10_002, 9);
    let src = gpu.upload(&source, "source").unwrap();
    let ids = gpu.tensor(seqs * seq_len, "ids").unwrap();
    let targets = gpu.tensor(seqs * seq_len, "targets").unwrap();
    let (rows, vocab) = (5usize, 1003usize);
    let mut logits = to_f32(&randn(rows * vocab, 10));
    logits[2 * vocab + 700] = 50.0;
    logits[3 * vocab + 9] = 50.0;
    logits[3 * vocab + 8] = 50.0; // a tie: the lower index wins
    let gl = gpu.upload(&logits, "logits").unwrap();
    let best = gpu.tensor(rows, "best").unwrap();
    let mut rec = Recorder::new(&gpu, &cache);
    tokens::prepare(
        &mut rec,
        &src,
        &ids,
        &targets,
        seqs as u32,
        seq_len as u32,
        stride as u32,
        masked as u32,
    )
    .unwrap();
    tokens::argmax(&mut rec, &gl, &best, rows as u32, vocab as u32).unwrap();
    rec.submit();
    let (want_ids, want_targets) = tokens::reference::prepare(&source, seqs, seq_len, stride, masked);
    assert_eq!(gpu.read::<u32>(&ids).unwrap(), want_ids);
    assert_eq!(gpu.read::<u32>(&targets).unwrap(), want_targets);
    let got = gpu.read::<u32>(&best).unwrap();
    assert_eq!(got, tokens::reference::argmax(&to_f64(&logits), rows, vocab));
    assert_eq!((got[2], got[3]), (700, 8));
}
