//! SwiGLU on the GPU against the f64 reference, on a length that fills no workgroup evenly.

mod common;

use ncalm::gpu::{KernelCache, Recorder};
use ncalm::ops::swiglu;
use ncalm::ops::testing::*;

#[test]
fn swiglu_forward_and_backward_match_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let n = 1000 * 3 + 17;
    let (a, b, dh) = (randn(n, 1), randn(n, 2), randn(n, 3));
    let ga = gpu.upload(&to_f32(&a), "a").unwrap();
    let gb = gpu.upload(&to_f32(&b), "b").unwrap();
    let gdh = gpu.upload(&to_f32(&dh), "dh").unwrap();
    let (h, da, db) =
        (gpu.tensor(n, "h").unwrap(), gpu.tensor(n, "da").unwrap(), gpu.tensor(n, "db").unwrap());
    let mut rec = Recorder::new(&gpu, &cache);
    swiglu::forward(&mut rec, &ga, &gb, &h).unwrap();
    swiglu::backward(&mut rec, &ga, &gb, &gdh, &da, &db).unwrap();
    rec.submit();
    let (rda, rdb) = swiglu::reference::backward(&a, &b, &dh);
    assert_close_f32(
        "swiglu forward",
        &gpu.read::<f32>(&h).unwrap(),
        &swiglu::reference::forward(&a, &b),
        1e-5,
    );
    assert_close_f32("swiglu da", &gpu.read::<f32>(&da).unwrap(), &rda, 1e-5);
    assert_close_f32("swiglu db", &gpu.read::<f32>(&db).unwrap(), &rdb, 1e-5);
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
