//! DeBERTa-v2 and -v3 checkpoints (`model_type: "deberta-v2"`), against transformers + PEFT
//! in float64 on two tiny random models (`tests/fixtures/tiny-deberta/`, DeBERTa-v3's shape:
//! relative positions alone, logarithmic buckets within the texts, layer-normalised relative
//! embeddings, no segment table; `tests/fixtures/tiny-deberta-v2/`, DeBERTa-v2's: absolute
//! positions too, exact distances clamped within the texts, a segment table, a tanh pooler,
//! `cls_dropout`; each written by its `make_fixture.py`): tokens, logits, loss and every
//! parameter's gradient, the buckets, PEFT adapters both ways, merged checkpoints, the
//! command line, and the CUDA backend (the CPU stand-in where there is no GPU) against the f64 CPU.

use crate::common;

use std::path::Path;

use common::family_fixture::{read_tensors, write_tensors, FamilyFixture};
use serde_json::{json, Value};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{BertConfig, Checkpoint, EncoderFamily};
use spafit::model::{log_bucket, BertClassifier};
use spafit::peft::{Method, PeftConfig, PeftPlan};

/// The DeBERTa-v3-shaped fixture, or where `SPAFIT_DEBERTA_FIXTURE` says.
fn v3() -> FamilyFixture {
    FamilyFixture::new(
        "tiny-deberta",
        "SPAFIT_DEBERTA_FIXTURE",
        EncoderFamily::DebertaV2,
    )
}

/// The DeBERTa-v2-shaped fixture, or where `SPAFIT_DEBERTA_V2_FIXTURE` says.
fn v2() -> FamilyFixture {
    FamilyFixture::new(
        "tiny-deberta-v2",
        "SPAFIT_DEBERTA_V2_FIXTURE",
        EncoderFamily::DebertaV2,
    )
}

/// `DebertaV2Tokenizer` as transformers 5.24 rebuilds it from tokenizer.json: ids,
/// attention mask and segment ids (the second text's in segment 1).
#[test]
fn deberta_tokens_match_transformers() {
    for f in [v3(), v2()] {
        f.check_tokens(&f.checkpoint("model"));
    }
    // An unknown token no piece is, with `unk_id` null: transformers' Unigram has no unknown
    // id then and fails on the first unknown character; refused here by name.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    v3().copy_model(&dir, |_| true);
    let path = dir.join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["unk_token"] = json!("[XX]");
    config["unk_id"] = Value::Null;
    std::fs::write(&path, config.to_string()).unwrap();
    let e = Checkpoint::open(&dir)
        .unwrap()
        .tokenizer(16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`unk_id` is null"), "{e}");
}

/// Full fine-tuning in f64 without dropout: logits, loss and the gradient of every parameter
/// transformers differentiates under its names (the relative embeddings and their LayerNorm
/// included), for single texts and pairs, on both shapes of DeBERTa.
#[test]
fn deberta_logits_loss_and_every_gradient_match_transformers() {
    for f in [v3(), v2()] {
        let grads = f.check_every_gradient(&f.checkpoint("model"));
        assert!(
            grads
                .iter()
                .any(|(n, g)| n == "bert.encoder.rel_embeddings.weight"
                    && g.iter().any(|&v| v != 0.0))
        );
    }
}

/// transformers' logarithmic buckets (printed by torch into the fixture's `buckets.json`):
/// the fixture's 8 buckets over 40 positions for every distance to ±60, and DeBERTa-v3's 256
/// over 512 to ±1100.
#[test]
fn deberta_buckets_follow_transformers() {
    let text = std::fs::read_to_string(v3().dir().join("buckets.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for (setting, buckets) in all.as_object().unwrap() {
        let (size, max) = setting.split_once('/').unwrap();
        let (size, max): (usize, usize) = (size.parse().unwrap(), max.parse().unwrap());
        for (distance, bucket) in buckets.as_object().unwrap() {
            let distance: i64 = distance.parse().unwrap();
            assert_eq!(
                log_bucket(distance, size, max),
                bucket.as_i64().unwrap(),
                "{setting}: distance {distance}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 121 + 2201);
}

/// A LoRA adapter written by PEFT's own `save_pretrained` (on `query_proj` and `value_proj`,
/// which with `share_att_key` map the relative embeddings too) gives PEFT's logits; spafit's
/// export holds exactly PEFT's tensors under DeBERTa's names and imports back bit for bit;
/// PEFT's adapter merged into the base is a `DebertaV2ForSequenceClassification` giving
/// PEFT's logits, its relative settings kept.
#[test]
fn deberta_adapters_import_export_and_merge_as_peft() {
    let f = v3();
    f.check_peft_adapter(&f.checkpoint("model"));
    f.check_export_beside_peft();
    let config = f.check_merge_of_peft_adapter("DebertaV2ForSequenceClassification");
    assert_eq!(config["model_type"], "deberta-v2");
    assert_eq!(config["position_buckets"], 8);
    assert_eq!(config["relative_attention"], true);
    let f = v2();
    f.check_peft_adapter(&f.checkpoint("model"));
}

/// Full fine-tuning (the relative embeddings and their LayerNorm train) and SPAFIT on the CPU
/// in f32 and in bf16 mode, dropout on (the relative rows' own dropout included): logits, loss
/// and every trainable gradient as the f64 reference gives them.
#[test]
fn deberta_in_f32_and_bf16_matches_the_f64_reference() {
    let configs = FamilyFixture::full_and_spafit();
    for f in [v3(), v2()] {
        f.check_on(&CpuBackend::f32(), &configs, 1e-4);
        f.check_on(&CpuBackend::bf16(), &configs, 0.1);
    }
}

/// Full fine-tuning and SPAFIT on the CUDA backend (the CPU stand-in without a GPU), f32,
/// dropout on: logits, loss and every trainable gradient as the f64 CPU reference gives them;
/// and in mixed precision (frozen weights in bf16, products on tensor cores, the disentangled
/// attention exact f32) within bf16's bound.
#[test]
fn deberta_on_cuda_matches_the_f64_reference() {
    use spafit::backend::cuda::CudaBackend;
    use spafit::tensor::DType;
    for f in [v3(), v2()] {
        f.check_full_and_spafit_on_cuda();
        let bf16 = CudaBackend::hardware_or_emulated(DType::BF16)
            .unwrap_or_else(|e| panic!("no CUDA backend, not even the CPU stand-in: {e}"));
        f.check_on(&bf16, &FamilyFixture::full_and_spafit(), 0.1);
    }
}

/// The family's command-line check (SPAFIT on the CPU and on `cuda-emu` to the same losses,
/// eval, predict, merge); `gradcheck` passing at 1e-6 with the key biases differenced like
/// any tensor (the position-to-content term gives them a gradient, where BERT's are exactly
/// zero and set apart).
#[test]
fn deberta_trains_evaluates_predicts_and_merges_from_the_command_line() {
    let f = v3();
    let model = f.dir().join("model");
    f.check_command_line(&model);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args([
            "gradcheck",
            "--method",
            "full",
            "--tolerance",
            "1e-6",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["skipped"], json!([]), "{report}");
    assert_eq!(report["tensors"], 58, "{report}");
}

/// `config.json` of the checkpoint in `dir`, edited by `change`.
fn edit_config(dir: &Path, change: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

/// DeBERTa-v2's variants spafit does not compute are refused naming the key (separate
/// position maps, the convolution, a narrower embedding, another pooler width or head size,
/// an unknown pooler activation, a non-boolean switch), as is DeBERTa v1; the settings that
/// change the encoder are named when a base differs.
#[test]
fn deberta_variants_spafit_does_not_run_are_refused_by_key() {
    let f = v3();
    let text = std::fs::read_to_string(f.dir().join("model/config.json")).unwrap();
    let base: Value = serde_json::from_str(&text).unwrap();
    let path = Path::new("config.json");
    let refused = |change: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        change(&mut c);
        BertConfig::from_json(&c.to_string(), path)
            .unwrap_err()
            .to_string()
    };
    for (key, value, says) in [
        ("share_att_key", json!(false), "`share_att_key` is not true"),
        ("conv_kernel_size", json!(3), "`conv_kernel_size`"),
        ("embedding_size", json!(24), "`embedding_size` 24"),
        ("pooler_hidden_size", json!(24), "`pooler_hidden_size` 24"),
        ("attention_head_size", json!(8), "`attention_head_size`"),
        ("pooler_hidden_act", json!("swish"), "`pooler_hidden_act`"),
        ("relative_attention", json!("yes"), "`relative_attention`"),
        ("pooler_dropout", json!(1.5), "`pooler_dropout`"),
        // transformers divides by half the buckets, and fails on these as null or a list.
        ("position_buckets", json!(1), "`position_buckets` is 1"),
        (
            "relative_attention",
            Value::Null,
            "`relative_attention` is null",
        ),
        ("norm_rel_ebd", Value::Null, "`norm_rel_ebd` is null"),
        (
            "norm_rel_ebd",
            json!(["layer_norm"]),
            "`norm_rel_ebd` is [\"layer_norm\"]",
        ),
        // 5 − 1 is half the 8 buckets: ln 1 = 0 divides the logarithmic buckets.
        ("max_relative_positions", json!(5), "divide by ln 1 = 0"),
    ] {
        let e = refused(&|c| c[key] = value.clone());
        assert!(e.contains(says), "{key}: {e}");
    }
    // Without relative attention transformers never reads the buckets: null is no fault.
    let mut c = base.clone();
    c["relative_attention"] = json!(false);
    c["position_buckets"] = Value::Null;
    assert!(BertConfig::from_json(&c.to_string(), path).is_ok());
    let e = refused(&|c| c["model_type"] = json!("deberta"));
    assert!(
        e.contains("`model_type` is \"deberta\"") && e.contains("deberta-v2"),
        "{e}"
    );
    // DebertaV2Config's defaults where BertConfig's differ: no segment table, eps 1e-7.
    let mut c = base.clone();
    c.as_object_mut().unwrap().remove("type_vocab_size");
    c.as_object_mut().unwrap().remove("layer_norm_eps");
    let read = BertConfig::from_json(&c.to_string(), path).unwrap();
    assert!(!read.has_token_types());
    assert_eq!(read.layer_norm_eps, 1e-7);
    let v2_config = v2().checkpoint("model").config;
    let ours = f.checkpoint("model").config;
    let difference = ours.encoder_difference(&v2_config).unwrap();
    assert!(
        difference.starts_with("type_vocab_size") || difference.contains("DeBERTa"),
        "{difference}"
    );
    let mut c = base.clone();
    c["position_buckets"] = json!(16);
    let other = BertConfig::from_json(&c.to_string(), path).unwrap();
    let difference = ours.encoder_difference(&other).unwrap();
    assert!(
        difference.starts_with("DeBERTa-v2 attention"),
        "{difference}"
    );
}

/// A checkpoint laid out as DeBERTa-v3's published ones are: an absolute position table the
/// model never reads (transformers ignores it), and no pooler or classifier (a bare
/// `DebertaV2Model`, the prefix `deberta` dropped): it loads as a base, and its fresh pooler
/// must train, as the refusal without --train-pooler says naming `pooler.dense`.
#[test]
fn a_published_v3_layout_loads_as_a_base() {
    let f = v3();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("base");
    f.copy_model(&dir, |_| true);
    let path = dir.join("model.safetensors");
    let mut tensors: Vec<_> = read_tensors(&path)
        .into_iter()
        .filter(|(name, ..)| !name.starts_with("pooler.") && !name.starts_with("classifier."))
        .map(|(name, dtype, shape, values)| {
            let name = name.strip_prefix("deberta.").unwrap_or(&name).to_string();
            (name, dtype, shape, values)
        })
        .collect();
    let (dtype, width) = (tensors[0].1, 40);
    tensors.push((
        "embeddings.position_embeddings.weight".into(),
        dtype,
        vec![40, width],
        vec![0.25; 40 * width],
    ));
    write_tensors(&path, &tensors);
    edit_config(&dir, |c| c["architectures"] = json!(["DebertaV2Model"]));
    let ck = Checkpoint::open(&dir).unwrap();
    let cpu = CpuBackend::f64();
    let mut model = BertClassifier::from_checkpoint(&ck, &cpu, 2, 0).unwrap();
    let plan = PeftPlan::new(
        &PeftConfig::new(Method::Lora).for_family(EncoderFamily::DebertaV2),
        3,
    )
    .unwrap();
    let e = model
        .apply_plan(&plan, &mut |_, s| cpu.zeros(s))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`pooler.dense`")
            && e.contains("DebertaV2Model")
            && e.contains("--train-pooler"),
        "{e}"
    );
    let mut config = PeftConfig::new(Method::Lora).for_family(EncoderFamily::DebertaV2);
    config.train_pooler = true;
    let plan = PeftPlan::new(&config, 3).unwrap();
    let mut model = BertClassifier::from_checkpoint(&ck, &cpu, 2, 0).unwrap();
    model.apply_plan(&plan, &mut |_, s| cpu.zeros(s)).unwrap();
    assert!(model.bert.embeddings.position.is_none());
}
