//! DistilBERT checkpoints, against transformers + PEFT in float64 on a tiny random DistilBERT
//! (`tests/fixtures/tiny-distilbert/`, written by its `make_fixture.py`): tokens (no segment
//! ids), logits, loss and every parameter's gradient (DistilBERT's names throughout, no
//! segment table, the ReLU head), PEFT adapters both ways, merged checkpoints, a masked-LM
//! checkpoint as the base, the CUDA backend (through the stand-in where there is no GPU)
//! against the f64 CPU reference, and the command line.

use crate::common;

use common::family_fixture::{
    copy_folder, identity_changes_with, remove_tokenizer_class, FamilyFixture,
};
use serde_json::Value;
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{BertConfig, Checkpoint, EncoderFamily};
use spafit::model::{BertClassifier, ModelInput};
use spafit::nn::DropoutPlan;
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};

/// The fixture, or where `SPAFIT_DISTILBERT_FIXTURE` says.
fn fixture() -> FamilyFixture {
    FamilyFixture::new(
        "tiny-distilbert",
        "SPAFIT_DISTILBERT_FIXTURE",
        EncoderFamily::DistilBert,
    )
}

/// DistilBertTokenizer is BERT's without segment ids: ids and attention mask as transformers
/// gives them, segment 0 throughout (pairs included), from tokenizer.json or from vocab.txt
/// alone. Where `tokenizer_config.json` names no class, transformers takes the model type's,
/// which is `BertTokenizer` itself: the same ids, and segment ids (which DistilBERT never
/// reads).
#[test]
fn distilbert_tokens_match_transformers() {
    let f = fixture();
    assert!(f.expected()["inputs"]["tokens_pairs"]
        .get("token_type_ids")
        .is_none());
    let ck = f.checkpoint("model");
    f.check_tokens(&ck);
    let tmp = tempfile::tempdir().unwrap();
    // vocab.txt from tokenizer.json's vocabulary, in id order, in place of tokenizer.json.
    let from_vocab = tmp.path().join("vocab");
    f.copy_model_with_vocab_txt(&from_vocab);
    f.check_tokens(&Checkpoint::open(&from_vocab).unwrap());
    for dir in [tmp.path().join("unnamed"), tmp.path().join("vocab-unnamed")] {
        let source = if dir.ends_with("unnamed") {
            f.dir().join("model")
        } else {
            from_vocab.clone()
        };
        copy_folder(&source, &dir, |_| true);
        assert_eq!(
            remove_tokenizer_class(&dir),
            Some("DistilBertTokenizer".into())
        );
        let unnamed = Checkpoint::open(&dir).unwrap();
        let (named, unnamed) = (f.encode(&ck, "pairs"), f.encode(&unnamed, "pairs"));
        assert_eq!(named.input_ids, unnamed.input_ids, "{}", dir.display());
        assert!(unnamed.token_type_ids.contains(&1), "{}", dir.display());
    }
}

/// DistilBERT's config names its sizes otherwise (`dim`, `n_layers`, `n_heads`, `hidden_dim`,
/// `activation`, `dropout`, `attention_dropout`, `seq_classif_dropout`), with
/// DistilBertConfig's defaults where it says nothing; the model has no segment table.
#[test]
fn distilbert_config_reads_its_own_keys() {
    let ck = fixture().checkpoint("model");
    let c = &ck.config;
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size
        ),
        (64, 3, 2, 96)
    );
    assert_eq!(c.classifier_dropout, Some(0.2));
    assert_eq!(c.layer_norm_eps, 1e-12);
    let path = std::path::Path::new("config.json");
    let bare = BertConfig::from_json(r#"{"model_type": "distilbert"}"#, path).unwrap();
    assert_eq!(
        (
            bare.vocab_size,
            bare.hidden_size,
            bare.num_hidden_layers,
            bare.num_attention_heads,
            bare.intermediate_size,
            bare.max_position_embeddings,
        ),
        (30522, 768, 6, 12, 3072, 512)
    );
    assert_eq!(
        (
            bare.hidden_dropout_prob,
            bare.attention_probs_dropout_prob,
            bare.classifier_dropout
        ),
        (0.1, 0.1, Some(0.2))
    );
    let e = BertConfig::from_json(r#"{"model_type": "distilbert", "dim": "wide"}"#, path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid DistilBERT config: `dim`"), "{e}");
    // BERT's names of the sizes win over DistilBERT's, as DistilBertConfig's attribute_map
    // makes them.
    let both = r#"{"model_type": "distilbert", "dim": 64, "hidden_size": 32, "n_heads": 2,
        "num_attention_heads": 4, "n_layers": 3}"#;
    let both = BertConfig::from_json(both, path).unwrap();
    assert_eq!(
        (
            both.hidden_size,
            both.num_attention_heads,
            both.num_hidden_layers
        ),
        (32, 4, 3)
    );
    let e = BertConfig::from_json(
        r#"{"model_type": "distilbert", "seq_classif_dropout": null}"#,
        path,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`seq_classif_dropout` is null"), "{e}");
    for name in ["q_lin", "attention.out_lin", "lin1", "ffn.lin2"] {
        let target: spafit::nn::LoraTarget = name.parse().unwrap();
        assert_eq!(
            EncoderFamily::DistilBert.hf_layer_module(target.module()),
            if name.contains('.') {
                name.to_string()
            } else if name.starts_with("lin") {
                format!("ffn.{name}")
            } else {
                format!("attention.{name}")
            }
        );
    }
    let cpu = CpuBackend::f64();
    let model = BertClassifier::from_checkpoint(&ck, &cpu, 3, 0).unwrap();
    assert!(model.bert.embeddings.token_type.is_none());
    assert!(!model.params().iter().any(|p| p.name.contains("token_type")));
}

/// Full fine-tuning in f64 without dropout: logits, loss and the gradient of every parameter
/// transformers differentiates (looked up under its names: `q_lin`, `sa_layer_norm`,
/// `ffn.lin1`, `pre_classifier`, ...), for single texts and for pairs.
#[test]
fn distilbert_logits_loss_and_every_gradient_match_transformers() {
    let f = fixture();
    let grads = f.check_every_gradient(&f.checkpoint("model"));
    assert!(grads.iter().any(|(n, _)| n == "bert.pooler.dense.weight"));
}

/// A LoRA adapter written by PEFT's own `save_pretrained` (on `q_lin` and `v_lin`, the head
/// saved whole: PEFT's `classifier` also matches `pre_classifier`) gives PEFT's logits, on the
/// sequence classifier and on the masked LM that holds the same encoder.
#[test]
fn a_peft_distilbert_adapter_gives_peft_logits_on_either_checkpoint() {
    let f = fixture();
    f.check_peft_adapter(&f.checkpoint("model"));
    f.check_peft_adapter(&f.checkpoint("masked-lm"));
}

/// An adapter PEFT saved without its head runs on the sequence classifier's own
/// (`pre_classifier`, `classifier`), as in PEFT; the masked LM has none to run it on.
#[test]
fn a_peft_distilbert_adapter_without_a_head_needs_the_checkpoints_own() {
    let f = fixture();
    f.check_base_head_adapter(&f.checkpoint("model"));
    f.check_base_head_adapter_refused(&f.checkpoint("masked-lm"));
}

/// The masked LM (`DistilBertForMaskedLM`, as distilbert-base-uncased ships) is the same
/// encoder: the same identity for adapters (which counts the layers, not the LM head), no
/// classifier head of ours, a fresh head whose dense map (`pre_classifier`) trains.
#[test]
fn a_masked_lm_is_the_same_encoder_under_a_fresh_head() {
    let f = fixture();
    let (base, ck) = (f.checkpoint("masked-lm"), f.checkpoint("model"));
    assert_eq!(
        base.weights.encoder_sha256().unwrap(),
        ck.weights.encoder_sha256().unwrap()
    );
    assert_eq!(base.classifier_outputs(), None);
    let folder = f.dir().join("masked-lm");
    assert!(identity_changes_with(
        &folder,
        "distilbert.transformer.layer.2.ffn.lin2.weight"
    ));
    assert!(!identity_changes_with(&folder, "vocab_transform.weight"));
    let cpu = CpuBackend::f64();
    let model = common::trained(&base, &cpu, &f.lora_plan(), 2);
    let trainable = model.trainable_names();
    for name in ["bert.pooler.dense.weight", "classifier.weight"] {
        assert!(trainable.contains(&name.to_string()), "{trainable:?}");
    }
}

/// spafit's export holds exactly the tensors PEFT's own `save_pretrained` writes for the same
/// adapter on DistilBERT (`distilbert.transformer.layer.N.attention.q_lin`, `pre_classifier`
/// and `classifier`) and reads back bit for bit; LayerNorm scales and the embeddings saved
/// under DistilBERT's module names (`sa_layer_norm`, `output_layer_norm`,
/// `distilbert.embeddings`, which holds no segment table) import back to the same plan.
#[test]
fn a_distilbert_adapter_exports_under_peft_names_and_imports_back() {
    let f = fixture();
    f.check_export_beside_peft();
    let ck = f.checkpoint("model");
    let cpu = CpuBackend::f64();
    let mut config = PeftConfig::new(Method::Spafit).for_family(EncoderFamily::DistilBert);
    config.n1 = Boundary::Layer(1);
    config.n2 = Boundary::Layer(2);
    config.train_embeddings = true;
    config.train_layer_norm_weights = true;
    let plan = PeftPlan::new(&config, 3).unwrap();
    let model = common::trained(&ck, &cpu, &plan, 3);
    let dir = tempfile::tempdir().unwrap();
    let config = f.export(dir.path(), &model, &plan);
    let saved = config["modules_to_save"].as_array().unwrap();
    for module in [
        "distilbert.embeddings",
        "distilbert.transformer.layer.1.sa_layer_norm",
        "distilbert.transformer.layer.2.output_layer_norm",
    ] {
        assert!(saved.contains(&Value::from(module)), "{saved:?}");
    }
    let pattern = config["target_modules"].as_str().unwrap();
    assert!(
        pattern.contains("ffn\\.lin1") && pattern.contains("attention\\.out_lin"),
        "{pattern}"
    );
    let (back, imported) = spafit::adapter::import_peft(dir.path(), &ck, &cpu).unwrap();
    assert!(imported.plan.train_embeddings && imported.plan.train_layer_norm_weights);
    assert_eq!(imported.plan.strata, plan.strata);
    assert_eq!(back.trainable_names(), model.trainable_names());
    for inputs in ["singles", "pairs"] {
        assert_eq!(
            f.logits_of(&ck, &cpu, &back, inputs),
            f.logits_of(&ck, &cpu, &model, inputs),
            "{inputs}"
        );
    }
}

/// PEFT's adapter merged into its DistilBERT base is a `DistilBertForSequenceClassification`
/// with the base's tensor names and DistilBERT's config keys, and gives PEFT's logits as a
/// checkpoint of its own.
#[test]
fn a_merged_distilbert_adapter_is_a_distilbert_sequence_classifier() {
    let config = fixture().check_merge_of_peft_adapter("DistilBertForSequenceClassification");
    assert_eq!(config["model_type"], "distilbert");
    assert_eq!(config["dim"], 64);
    assert!(config.get("hidden_size").is_none(), "{config}");
}

/// Full fine-tuning and SPAFIT on DistilBERT on the CUDA backend (the CPU stand-in without a
/// GPU), f32, with dropout on: logits, loss and every trainable gradient as the f64 CPU
/// reference gives them.
#[test]
fn distilbert_on_cuda_matches_the_f64_reference() {
    fixture().check_full_and_spafit_on_cuda();
}

/// `spafit train`, `eval`, `predict`, `merge` from the masked LM, as a user starts from
/// distilbert-base-uncased, on the CPU and on `cuda-emu`.
#[test]
fn distilbert_trains_evaluates_predicts_and_merges_from_the_command_line() {
    let f = fixture();
    f.check_command_line(&f.dir().join("masked-lm"));
}

/// In training, DistilBERT's layer drops out the attention probabilities and the
/// feed-forward's output but not the attention's output map (BERT's layer drops out both
/// maps' outputs): on the same weights with only hidden-state dropout on, one layer's
/// attention map no longer sees a mask when the family says DistilBERT.
#[test]
fn a_distilbert_layer_drops_out_what_transformers_drops_out() {
    let f = fixture();
    let ck = f.checkpoint("model");
    let cpu = CpuBackend::f64();
    let model = BertClassifier::from_fine_tuned(&ck, &cpu).unwrap();
    let input = ModelInput::for_model(&cpu, &f.encode(&ck, "singles"), &ck.config).unwrap();
    let logits = |model: &BertClassifier<CpuBackend>| {
        let mut tape = Tape::inference(cpu);
        // Hidden-state dropout only: the embeddings' and the feed-forwards' (and BERT's
        // attention outputs').
        let mut dropouts = DropoutPlan::train(0.5, 0.0, 0.0, 11);
        let out = model.forward(&mut tape, &input, &mut dropouts).unwrap();
        cpu.to_f64(out.value()).unwrap()
    };
    let as_distilbert = logits(&model);
    let mut as_bert_layers = model.clone();
    for layer in &mut as_bert_layers.bert.layers {
        layer.config.dropout_after_attention_output = true;
    }
    assert_ne!(as_distilbert, logits(&as_bert_layers));
    for layer in &model.bert.layers {
        assert!(!layer.config.dropout_after_attention_output);
    }
}

/// `activation: relu` (a ReLU between the feed-forward maps): the fixture's weights under that
/// config give transformers' float64 logits (`relu_expected.json`, from `make_relu.py`), which
/// differ from the GELU model's.
#[test]
fn a_relu_feed_forward_gives_transformers_logits() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("relu");
    f.copy_model(&dir, |name| name != "config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(f.dir().join("model/config.json")).unwrap())
            .unwrap();
    config["activation"] = "relu".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let relu = Checkpoint::open(&dir).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(f.dir().join("relu_expected.json")).unwrap())
            .unwrap();
    let cpu = CpuBackend::f64();
    let model = BertClassifier::from_fine_tuned(&relu, &cpu).unwrap();
    for layer in &model.bert.layers {
        assert_eq!(
            layer.config.activation,
            spafit::nn::FeedForwardActivation::Relu
        );
    }
    for inputs in ["singles", "pairs"] {
        let want: Vec<f64> = expected[inputs]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let e = common::rel_err(&f.logits_of(&relu, &cpu, &model, inputs), &want);
        println!("ReLU feed-forward, {inputs}: logits rel err {e:.2e}");
        assert!(e <= 1e-12, "{inputs}: {e:e}");
    }
}

/// A file's encoder hashes follow the family it is read as: those taken under BERT's names
/// (which miss DistilBERT's `transformer.` layers) are not kept once it is read as DistilBERT.
#[test]
fn encoder_hashes_taken_before_read_as_are_not_kept() {
    let ck = fixture().checkpoint("model");
    let as_bert = spafit::checkpoint::WeightsFile::open(ck.weights.path()).unwrap();
    let bert_view = (
        as_bert.encoder_sha256().unwrap().to_string(),
        as_bert.encoder_fingerprint().unwrap().to_string(),
    );
    let own = (
        ck.weights.encoder_sha256().unwrap().to_string(),
        ck.weights.encoder_fingerprint().unwrap().to_string(),
    );
    assert_ne!(bert_view.0, own.0);
    assert_ne!(bert_view.1, own.1);
    let as_distilbert = as_bert.read_as(EncoderFamily::DistilBert);
    assert_eq!(
        (
            as_distilbert.encoder_sha256().unwrap(),
            as_distilbert.encoder_fingerprint().unwrap()
        ),
        (own.0.as_str(), own.1.as_str())
    );
}
