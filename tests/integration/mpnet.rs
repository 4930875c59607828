//! MPNet checkpoints, against transformers + PEFT in float64 on a tiny random MPNet
//! (`tests/fixtures/tiny-mpnet/`, written by its `make_fixture.py`): MPNetTokenizer's ids,
//! the relative position buckets, logits, loss and every parameter's gradient (the shared
//! relative position table's included), PEFT adapters both ways, merged checkpoints, the
//! command line, and the CUDA backend (through the stand-in where there is no GPU) against the
//! f64 CPU reference.

use crate::common;

use common::family_fixture::{logged_losses, remove_tokenizer_class, sentiment_csv, FamilyFixture};
use serde_json::Value;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{BertConfig, EncoderFamily};
use spafit::model::{bucket_ids, relative_position_bucket, BertClassifier};
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};

const TABLE: &str = "bert.encoder.relative_attention_bias.weight";

/// The fixture, or where `SPAFIT_MPNET_FIXTURE` says.
fn fixture() -> FamilyFixture {
    FamilyFixture::new("tiny-mpnet", "SPAFIT_MPNET_FIXTURE", EncoderFamily::Mpnet)
}

/// MPNetTokenizer is BERT's WordPiece pipeline with RoBERTa's `<s> A </s></s> B </s>` and
/// no segment ids: the ids and attention mask transformers gives.
#[test]
fn mpnet_tokens_match_transformers() {
    let f = fixture();
    // `--lora-targets` takes MPNet's names of the attention's maps too.
    for (name, module) in [
        ("q", "attention.attn.q"),
        ("attention.attn.k", "attention.attn.k"),
        ("v", "attention.attn.v"),
        ("o", "attention.attn.o"),
    ] {
        let target: spafit::nn::LoraTarget = name.parse().unwrap();
        assert_eq!(
            EncoderFamily::Mpnet.hf_layer_module(target.module()),
            module
        );
    }
    assert!(f.expected()["inputs"]["tokens_pairs"]
        .get("token_type_ids")
        .is_none());
    f.check_tokens(&f.checkpoint("model"));
    // From vocab.txt alone (tokenizer.json's vocabulary in id order), with the class named
    // and with none named: AutoTokenizer builds MPNetTokenizer by the model type either way.
    let tmp = tempfile::tempdir().unwrap();
    for named in [true, false] {
        let dir = tmp.path().join(format!("vocab-named-{named}"));
        f.copy_model_with_vocab_txt(&dir);
        if !named {
            assert_eq!(remove_tokenizer_class(&dir), Some("MPNetTokenizer".into()));
        }
        f.check_tokens(&spafit::checkpoint::Checkpoint::open(&dir).unwrap());
    }
}

/// Every distance from −1100 to 1100 falls in transformers' bucket (`buckets.json`, printed
/// by torch), the edges its f32 logarithm decides included; the bias rows run from the
/// longest distance back to the longest forward.
#[test]
fn relative_position_buckets_match_transformers() {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().dir().join("buckets.json")).unwrap(),
    )
    .unwrap();
    let first = json["first_distance"].as_i64().unwrap();
    let buckets = json["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 2201);
    for (i, want) in buckets.iter().enumerate() {
        let distance = first + i as i64;
        assert_eq!(
            u64::from(relative_position_bucket(distance)),
            want.as_u64().unwrap(),
            "distance {distance}"
        );
    }
    let ids = bucket_ids(4);
    let at = |d: i64| u32::try_from(buckets[(d - first) as usize].as_u64().unwrap()).unwrap();
    assert_eq!(ids, (-3..=3).map(at).collect::<Vec<_>>());
}

/// Full fine-tuning in f64 without dropout: logits, loss and the gradient of every parameter
/// transformers differentiates, under its names (`attention.attn.q`, `attention.LayerNorm`,
/// `mpnet.encoder.relative_attention_bias`, `classifier.dense`, ...), for single texts and
/// pairs.
#[test]
fn mpnet_logits_loss_and_every_gradient_match_transformers() {
    let f = fixture();
    let grads = f.check_every_gradient(&f.checkpoint("model"));
    let table = grads
        .iter()
        .find(|(n, _)| n == TABLE)
        .expect("the relative position table's gradient");
    assert!(table.1.iter().any(|&g| g != 0.0));
}

/// `--shape mpnet-base` (spafit bench) is BERT-base's shape as MPNet: its vocabulary, no
/// segment table, a 32-row relative position table per head; a config whose table has fewer
/// rows than the 32 buckets transformers looks up is refused.
#[test]
fn the_mpnet_base_preset_and_a_short_table() {
    let c = BertConfig::preset("mpnet-base").unwrap();
    assert_eq!(c.family(), EncoderFamily::Mpnet);
    assert_eq!(
        (c.vocab_size, c.type_vocab_size, c.relative_position_rows()),
        (30527, 1, Some(32))
    );
    c.validate().unwrap();
    // Messages citing the positions say which ones MPNet skips.
    assert_eq!(
        c.max_tokens_source(),
        "config.json's `max_position_embeddings` 512, less the 2 that MPNet's positions skip"
    );
    assert_eq!(c.max_tokens(), 510);
    let short = BertConfig {
        relative_attention_num_buckets: Some(16),
        ..c
    };
    let e = short.validate().unwrap_err().to_string();
    assert!(e.contains("`relative_attention_num_buckets` is 16"), "{e}");
}

/// The table is the encoder's, in no stratum: full fine-tuning trains it, SPAFIT, LoRA and
/// BitFit keep it; and it moves the logits (zeroed, they change).
#[test]
fn the_relative_position_table_trains_under_full_fine_tuning_only() {
    let f = fixture();
    let ck = f.checkpoint("model");
    let cpu = CpuBackend::f64();
    for method in [Method::Full, Method::Spafit, Method::Lora, Method::BitFit] {
        let mut config = PeftConfig::new(method).for_family(EncoderFamily::Mpnet);
        config.n1 = Boundary::Layer(1);
        config.n2 = Boundary::Layer(2);
        let plan = PeftPlan::new(&config, 3).unwrap();
        let model = common::trained(&ck, &cpu, &plan, 3);
        assert_eq!(
            model.trainable_names().iter().any(|n| n == TABLE),
            method == Method::Full,
            "{method}"
        );
    }
    let model = BertClassifier::from_fine_tuned(&ck, &cpu).unwrap();
    let mut flat = model.clone();
    let table = flat.bert.relative_position.as_mut().unwrap();
    let zeros = vec![0.0; table.value.numel()];
    table.value = cpu
        .tensor_from_f64(table.value.shape().clone(), &zeros)
        .unwrap();
    assert_ne!(
        f.logits_of(&ck, &cpu, &model, "pairs"),
        f.logits_of(&ck, &cpu, &flat, "pairs")
    );
}

/// A LoRA adapter written by PEFT's own `save_pretrained` (on `q` and `v`, the head saved
/// whole) gives PEFT's logits; spafit's export holds exactly PEFT's tensors under MPNet's
/// names and imports back bit for bit; PEFT's adapter merged into the base is an
/// `MPNetForSequenceClassification` giving PEFT's logits.
#[test]
fn mpnet_adapters_import_export_and_merge_as_peft() {
    let f = fixture();
    f.check_peft_adapter(&f.checkpoint("model"));
    f.check_export_beside_peft();
    let config = f.check_merge_of_peft_adapter("MPNetForSequenceClassification");
    assert_eq!(config["model_type"], "mpnet");
}

/// Full fine-tuning (the table trains) and SPAFIT on MPNet on the CUDA backend (the CPU
/// stand-in without a GPU), f32, with dropout on: logits, loss and every trainable gradient as
/// the f64 CPU reference gives them.
#[test]
fn mpnet_on_cuda_matches_the_f64_reference() {
    fixture().check_full_and_spafit_on_cuda();
}

/// The family's command-line check (SPAFIT 1/2 on the CPU and on `cuda-emu` to the same
/// losses, `--train-pooler` refused, `eval`, `predict`, `merge`), and full fine-tuning, whose
/// table trains through the bias's gradient kernels, on both devices to the same losses.
#[test]
fn mpnet_trains_evaluates_predicts_and_merges_from_the_command_line() {
    let f = fixture();
    let model_dir = f.dir().join("model");
    f.check_command_line(&model_dir);
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ("a gorgeous movie", 1),
        ("unbelievably dull", 0),
        ("what plot?", 0),
    ];
    std::fs::write(dir.path().join("train.csv"), sentiment_csv(&rows)).unwrap();
    for device in ["cpu", "cuda-emu"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args(["train", "--model", &model_dir.display().to_string()])
            .args(["--train-file", "train.csv", "--dev-file", "train.csv"])
            .args(["--method", "full", "--max-len", "16", "--batch-size", "2"])
            .args([
                "--max-steps",
                "2",
                "--device",
                device,
                "--output",
                device,
                "--quiet",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cpu = logged_losses(&dir.path().join("cpu"));
    let emu = logged_losses(&dir.path().join("cuda-emu"));
    assert!(!cpu.is_empty() && cpu.len() == emu.len(), "{cpu:?} {emu:?}");
    for (a, b) in cpu.iter().zip(&emu) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{cpu:?} vs {emu:?}");
    }
}
