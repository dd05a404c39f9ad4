//! `Trainer`, the step-by-step training API: it takes the same steps as `train()` on the same options,
//! reads the losses back however seldom it is asked, saves checkpoints that load and resume, and stops
//! at the end of its schedule.

mod common;

use std::path::Path;

use ncalm::config::Preset;
use ncalm::data::Dyck;
use ncalm::model::infer::{GpuGenerator, Sampling};
use ncalm::model::HostParams;
use ncalm::train::checkpoint;
use ncalm::train::trainer::{train, Stage, StageData, TrainOptions};
use ncalm::train::Trainer;

/// The tiny preset on Dyck sequences, every step logged, stopping after `stop` steps.
fn options(run_dir: &Path, log_every: u64, stop: Option<u64>) -> TrainOptions {
    let mut preset = Preset::load("tiny", &[]).unwrap();
    preset.train.log_every = log_every;
    let mut opts = TrainOptions::new(preset, Stage::Pre, StageData::Dyck(Dyck::PAPER), run_dir);
    opts.stop_step = stop;
    opts
}

#[test]
fn trainer_takes_the_steps_train_takes_and_saves_loadable_checkpoints() {
    let gpu = common::gpu();
    let dir = tempfile::tempdir().unwrap();
    let quiet = &mut |_: &str| {};

    // The whole loop.
    let looped = dir.path().join("train");
    let summary = train(&gpu, &options(&looped, 1, Some(3)), quiet).unwrap();
    let logged = common::logged_steps(&looped);
    assert_eq!(logged.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);

    // The same options, driven step by step.
    let driven = dir.path().join("trainer");
    let opts = options(&driven, 1, Some(3));
    let mut trainer = Trainer::new(&gpu, &opts, quiet).unwrap();
    assert_eq!((trainer.steps_done(), trainer.tokens_seen(), trainer.stop_step()), (0, 0, 3));
    assert!(trainer.history().unwrap().is_empty());
    assert!(trainer.loss().unwrap().is_nan(), "no loss before the first step");
    let mut steps = Vec::new();
    for _ in 0..3 {
        trainer.step().unwrap();
        steps.extend(trainer.history().unwrap());
    }
    let got: Vec<(u64, f64, f64)> = steps.iter().map(|s| (s.step, s.loss, s.grad_norm)).collect();
    assert_eq!(got, logged, "the same steps, to the last bit");
    assert!(steps.iter().all(|s| s.loss.is_finite() && !s.skipped));
    assert_eq!(trainer.loss().unwrap(), logged[2].1, "the latest loss stays readable");
    assert_eq!(trainer.tokens_seen(), summary.tokens);
    let err = trainer.step().unwrap_err().to_string();
    assert!(err.contains("last step (3)"), "{err}");

    let eval = trainer.evaluate().unwrap();
    let looped_eval = summary.eval.as_ref().expect("train() evaluates at its last step");
    assert_eq!((eval.step, eval.tokens, eval.val_loss), (3, summary.tokens, looped_eval.val_loss));

    let saved = trainer.save().unwrap();
    assert_eq!(saved, checkpoint::path_of(&driven, 3));
    let mine = checkpoint::load(&driven).unwrap();
    let theirs = checkpoint::load(&summary.checkpoint).unwrap();
    assert_eq!((mine.state.step, mine.state.tokens), (3, summary.tokens));
    assert_eq!(mine.params, theirs.params, "the same parameters as train()'s checkpoint");
    assert_eq!(mine.state.settings, theirs.state.settings);
    drop(trainer);

    // A new run must not overwrite it; a resumed one continues from it.
    let err = Trainer::new(&gpu, &opts, quiet).err().expect("the directory holds a run").to_string();
    assert!(err.contains("already holds a run"), "{err}");
    let mut resume = options(&driven, 1, Some(4));
    resume.resume = true;
    let mut resumed = Trainer::new(&gpu, &resume, quiet).unwrap();
    assert_eq!((resumed.steps_done(), resumed.tokens_seen()), (3, summary.tokens));
    resumed.step().unwrap();
    assert!(resumed.loss().unwrap().is_finite());
    assert_eq!(resumed.steps_done(), 4);
}

#[test]
fn losses_wait_on_the_gpu_until_asked_for() {
    let gpu = common::gpu();
    let dir = tempfile::tempdir().unwrap();
    let quiet = &mut |_: &str| {};
    // Every step read at once, and then 5 steps left unread while the GPU holds only 2 of them.
    let mut each = Trainer::new(&gpu, &options(&dir.path().join("each"), 1, None), quiet).unwrap();
    let mut once = Trainer::new(&gpu, &options(&dir.path().join("once"), 2, None), quiet).unwrap();
    let mut expected = Vec::new();
    for _ in 0..5 {
        each.step().unwrap();
        expected.extend(each.history().unwrap());
        once.step().unwrap();
    }
    let history = once.history().unwrap();
    assert_eq!(history.iter().map(|s| s.step).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(history, expected, "the losses read early are kept until asked for");
    assert!(once.history().unwrap().is_empty(), "each step's loss is returned once");
    assert_eq!(once.loss().unwrap(), expected[4].loss);
}

/// A generator taken from a `Trainer` samples from the parameters being trained, without a copy: after
/// some steps it generates what a generator built from the saved checkpoint generates, and it sees the
/// next step.
#[test]
fn a_trainers_generator_samples_the_model_being_trained() {
    let gpu = common::gpu();
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(&gpu, &options(dir.path(), 1, Some(4)), &mut |_| {}).unwrap();
    for _ in 0..3 {
        trainer.step().unwrap();
    }
    let greedy = Sampling { temperature: 0.0, top_p: 1.0, seed: 0 };
    let generate = |generator: &mut GpuGenerator| {
        generator.set_prompt(&[1, 2, 3]).unwrap();
        generator.generate(12).unwrap();
        let logits = gpu.read::<f32>(generator.logits()).unwrap();
        (generator.read_tokens().unwrap(), logits)
    };
    let mut live = trainer.generator(greedy).unwrap();
    let (tokens, logits) = generate(&mut live);

    let ck = checkpoint::load(&trainer.save().unwrap()).unwrap();
    let host = HostParams::from_checkpoint(&ck.config, ck.params).unwrap();
    let mut saved = GpuGenerator::new(&gpu, &ck.config, &host, greedy).unwrap();
    assert_eq!(generate(&mut saved), (tokens.clone(), logits.clone()), "the checkpoint's own generation");

    trainer.step().unwrap();
    let (_, after) = generate(&mut live);
    assert_ne!(after, logits, "the generator reads the parameters the step updated");
}
