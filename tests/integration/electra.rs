//! ELECTRA checkpoints, against transformers + PEFT in float64 on a tiny random ELECTRA whose
//! embeddings are narrower than its hidden size (`tests/fixtures/tiny-electra/`, written by its
//! `make_fixture.py`): tokens, logits, loss and every parameter's gradient (the embeddings'
//! projection and the GELU head included), PEFT adapters both ways, merged checkpoints, a
//! discriminator checkpoint as the base, the CUDA backend (through the stand-in where there
//! is no GPU) against the f64 CPU reference, and the command line.

use crate::common;

use common::family_fixture::{
    identity_changes_with, read, read_tensors, remove_tokenizer_class, write_tensors, FamilyFixture,
};
use common::rel_err;
use serde_json::Value;
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{Checkpoint, EncoderFamily, WeightsFile};
use spafit::model::{BertClassifier, ModelInput};
use spafit::nn::DropoutPlan;
use spafit::peft::{Method, PeftConfig, PeftPlan};

/// The fixture, or where `SPAFIT_ELECTRA_FIXTURE` says.
fn fixture() -> FamilyFixture {
    FamilyFixture::new(
        "tiny-electra",
        "SPAFIT_ELECTRA_FIXTURE",
        EncoderFamily::Electra,
    )
}

/// ElectraTokenizer is BERT's: ids, attention mask and segment ids (which ELECTRA reads,
/// unlike RoBERTa) as transformers gives them; the same where `tokenizer_config.json` names no
/// class, as the published ELECTRA folders' configs do (transformers then takes the model
/// type's, `BertTokenizer` again).
#[test]
fn electra_tokens_match_transformers() {
    let f = fixture();
    let ck = f.checkpoint("model");
    assert!(ck.config.projects_embeddings());
    assert!(f.expected()["inputs"]["tokens_pairs"]
        .get("token_type_ids")
        .is_some());
    f.check_tokens(&ck);
    let tmp = tempfile::tempdir().unwrap();
    let unnamed = tmp.path().join("model");
    f.copy_model(&unnamed, |_| true);
    assert!(remove_tokenizer_class(&unnamed).is_some());
    f.check_tokens(&Checkpoint::open(&unnamed).unwrap());
}

/// Full fine-tuning in f64 without dropout: logits, loss and the gradient of every parameter
/// transformers differentiates (looked up under its names: `electra.embeddings_project`,
/// `classifier.dense`, `classifier.out_proj`), for single texts and for pairs.
#[test]
fn electra_logits_loss_and_every_gradient_match_transformers() {
    let f = fixture();
    let grads = f.check_every_gradient(&f.checkpoint("model"));
    assert!(
        grads
            .iter()
            .any(|(n, _)| n == "bert.embeddings_project.weight"),
        "the projection trains under full fine-tuning"
    );
}

/// A LoRA adapter written by PEFT's own `save_pretrained` loads and gives PEFT's logits, on
/// the sequence classifier it was trained on and on the discriminator checkpoint, which holds
/// the same encoder under another head (the adapter brings its own). One saved without a head
/// runs on the sequence classifier's own, and is refused on the discriminator, which has none.
#[test]
fn a_peft_electra_adapter_gives_peft_logits_on_either_checkpoint() {
    let f = fixture();
    f.check_peft_adapter(&f.checkpoint("model"));
    f.check_peft_adapter(&f.checkpoint("discriminator"));
    f.check_base_head_adapter(&f.checkpoint("model"));
    f.check_base_head_adapter_refused(&f.checkpoint("discriminator"));
}

/// The discriminator checkpoint (`ElectraForPreTraining`) is the same encoder: the same
/// identity for adapters (which counts the projection, not the discriminator's head), no
/// classifier head of ours, a fresh head that trains whole.
#[test]
fn a_discriminator_is_the_same_encoder_under_a_fresh_head() {
    let f = fixture();
    let (disc, ck) = (f.checkpoint("discriminator"), f.checkpoint("model"));
    assert_eq!(
        disc.weights.encoder_sha256().unwrap(),
        ck.weights.encoder_sha256().unwrap()
    );
    assert_eq!(disc.classifier_outputs(), None);
    assert_eq!(disc.foreign_head(), None);
    let folder = f.dir().join("discriminator");
    assert!(identity_changes_with(
        &folder,
        "electra.embeddings_project.weight"
    ));
    assert!(!identity_changes_with(
        &folder,
        "discriminator_predictions.dense.weight"
    ));
    let cpu = CpuBackend::f64();
    let model = common::trained(&disc, &cpu, &f.lora_plan(), 2);
    let trainable = model.trainable_names();
    for name in ["bert.pooler.dense.weight", "classifier.weight"] {
        assert!(trainable.contains(&name.to_string()), "{trainable:?}");
    }
    // The projection is the checkpoint's, frozen under LoRA.
    assert!(!trainable.iter().any(|n| n.contains("embeddings_project")));
    let project = model.bert.embeddings.project.as_ref().unwrap();
    let stored = read(&disc.weights, "electra.embeddings_project.weight");
    assert_eq!(cpu.to_f64(&project.weight.value).unwrap(), stored);
}

/// spafit's export holds exactly the tensors PEFT's own `save_pretrained` writes for the same
/// adapter on ELECTRA (the head as `classifier.dense` and `classifier.out_proj`, the layers
/// under `electra.`) and reads back bit for bit. Where the embeddings train, the projection is
/// saved with them; PEFT saving `electra.embeddings` alone kept the projection frozen, and so
/// does the import (the tables too: a plan trains both or neither).
#[test]
fn an_electra_adapter_exports_under_peft_names_and_imports_back() {
    let f = fixture();
    f.check_export_beside_peft();
    let ck = f.checkpoint("model");
    let cpu = CpuBackend::f64();
    let mut config = PeftConfig::new(Method::Lora).for_family(EncoderFamily::Electra);
    config.train_embeddings = true;
    let with_embeddings = PeftPlan::new(&config, 3).unwrap();
    let model = common::trained(&ck, &cpu, &with_embeddings, 3);
    assert!(model
        .trainable_names()
        .contains(&"bert.embeddings_project.bias".to_string()));
    let dir = tempfile::tempdir().unwrap();
    let config = f.export(dir.path(), &model, &with_embeddings);
    let saved = config["modules_to_save"].as_array().unwrap();
    for module in ["electra.embeddings", "electra.embeddings_project"] {
        assert!(saved.contains(&Value::from(module)), "{saved:?}");
    }
    let ours = WeightsFile::open(&dir.path().join("adapter_model.safetensors")).unwrap();
    let project = "base_model.model.electra.embeddings_project.weight";
    assert_eq!(ours.shape(project), Some(vec![64, 24]));
    let (back, imported) = spafit::adapter::import_peft(dir.path(), &ck, &cpu).unwrap();
    assert!(imported.plan.train_embeddings);
    assert!(
        imported.kept_frozen.is_empty(),
        "{:?}",
        imported.kept_frozen
    );
    assert_eq!(back.trainable_names(), model.trainable_names());
    assert_eq!(
        f.logits_of(&ck, &cpu, &back, "pairs"),
        f.logits_of(&ck, &cpu, &model, "pairs")
    );

    let path = dir.path().join("adapter_model.safetensors");
    let without: Vec<_> = read_tensors(&path)
        .into_iter()
        .filter(|t| !t.0.contains("embeddings_project"))
        .collect();
    write_tensors(&path, &without);
    let config_path = dir.path().join("adapter_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["modules_to_save"] = serde_json::json!(["classifier", "electra.embeddings"]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let (back, imported) = spafit::adapter::import_peft(dir.path(), &ck, &cpu).unwrap();
    assert!(!imported.plan.train_embeddings);
    assert!(
        imported
            .kept_frozen
            .contains(&"electra.embeddings.word_embeddings.weight".to_string()),
        "{:?}",
        imported.kept_frozen
    );
    assert!(!back
        .trainable_names()
        .iter()
        .any(|n| n.contains("embeddings")));
    let project = &back.bert.embeddings.project.as_ref().unwrap().weight.value;
    assert_eq!(
        cpu.to_f64(project).unwrap(),
        read(&ck.weights, "electra.embeddings_project.weight"),
        "the projection is the base's"
    );
}

/// PEFT's adapter merged into its ELECTRA base is an `ElectraForSequenceClassification` with
/// the base's tensor names and `embedding_size`, and gives PEFT's logits as a checkpoint of
/// its own.
#[test]
fn a_merged_electra_adapter_is_an_electra_sequence_classifier() {
    let config = fixture().check_merge_of_peft_adapter("ElectraForSequenceClassification");
    assert_eq!(config["model_type"], "electra");
    assert_eq!(config["embedding_size"], 24);
}

/// Full fine-tuning (the projection and the embeddings train) and SPAFIT on ELECTRA on the
/// CUDA backend (the CPU stand-in without a GPU), f32, with dropout on: logits, loss and every
/// trainable gradient as the f64 CPU reference gives them.
#[test]
fn electra_on_cuda_matches_the_f64_reference() {
    fixture().check_full_and_spafit_on_cuda();
}

/// `spafit train`, `eval`, `predict`, `merge` from the discriminator checkpoint, as a user
/// starts from ELECTRA's published ones, on the CPU and on `cuda-emu`.
#[test]
fn electra_trains_evaluates_predicts_and_merges_from_the_command_line() {
    let f = fixture();
    f.check_command_line(&f.dir().join("discriminator"));
}

/// `embedding_size` absent is transformers' 128 (a projection under a hidden size of 64);
/// equal to the hidden size (ELECTRA-base's and -large's), no projection: the tables are
/// hidden-wide and a stored projection is not asked for. Null, or a width the tables do not
/// have, is refused naming the setting.
#[test]
fn embedding_size_defaults_and_equal_widths_as_in_transformers() {
    let text = std::fs::read_to_string(fixture().dir().join("model/config.json")).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    json.as_object_mut().unwrap().remove("embedding_size");
    let path = std::path::Path::new("config.json");
    let config = spafit::checkpoint::BertConfig::from_json(&json.to_string(), path).unwrap();
    assert_eq!(
        (config.embedding_width(), config.projects_embeddings()),
        (128, true)
    );
    json["embedding_size"] = 64.into();
    let config = spafit::checkpoint::BertConfig::from_json(&json.to_string(), path).unwrap();
    assert_eq!(
        (config.embedding_width(), config.projects_embeddings()),
        (64, false)
    );
    // A BERT reads no `embedding_size`, as transformers' BertConfig does not.
    json["model_type"] = "bert".into();
    json["embedding_size"] = 24.into();
    let config = spafit::checkpoint::BertConfig::from_json(&json.to_string(), path).unwrap();
    assert_eq!(
        (config.embedding_width(), config.projects_embeddings()),
        (64, false)
    );

    // Refused, each naming the setting: null (transformers refuses it too), a width the
    // tables do not have, a width of another type.
    json["model_type"] = "electra".into();
    json["embedding_size"] = Value::Null;
    let e = spafit::checkpoint::BertConfig::from_json(&json.to_string(), path).unwrap_err();
    assert!(e.to_string().contains("`embedding_size` is null"), "{e}");
    json["embedding_size"] = "wide".into();
    let e = spafit::checkpoint::BertConfig::from_json(&json.to_string(), path).unwrap_err();
    assert!(
        e.to_string()
            .contains("invalid ELECTRA config: `embedding_size`"),
        "{e}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let narrower = tmp.path().join("model");
    fixture().copy_model(&narrower, |name| name != "config.json");
    json["embedding_size"] = 16.into();
    std::fs::write(narrower.join("config.json"), json.to_string()).unwrap();
    let e = BertClassifier::from_checkpoint(
        &Checkpoint::open(&narrower).unwrap(),
        &CpuBackend::f64(),
        3,
        0,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("word_embeddings.weight` has shape [173, 24]")
            && e.to_string().contains("`embedding_size`, 16 here"),
        "{e}"
    );

    // A model of equal widths loads without a projection, from a file holding none.
    let mut config = fixture().checkpoint("model").config.clone();
    config.embedding_size = Some(64);
    let cpu = CpuBackend::f64();
    let model = BertClassifier::random(&config, &cpu, 2, 1).unwrap();
    assert!(model.bert.embeddings.project.is_none());
    assert_eq!(model.bert.embeddings.word.value.dims(), [173, 64]);
    assert!(!model.params().iter().any(|p| p.name.contains("project")));
}

/// The frozen projection stored in bf16 (`store_frozen_weights` in bf16 mode, on the CPU and
/// on the CUDA backend): LoRA's logits and loss within bf16's tolerance of the f64 reference.
#[test]
fn a_frozen_projection_in_bf16_stays_within_tolerance() {
    use spafit::backend::cuda::CudaBackend;
    use spafit::tensor::DType;
    let f = fixture();
    let ck = f.checkpoint("model");
    let plan = f.lora_plan();
    fn run<B: Backend>(ck: &Checkpoint, backend: &B, plan: &PeftPlan) -> Vec<f64> {
        let f = fixture();
        let mut model = common::trained(ck, backend, plan, 3);
        model.store_frozen_weights(backend).unwrap();
        let project = &model.bert.embeddings.project.as_ref().unwrap().weight;
        assert!(!project.trainable);
        let input = ModelInput::for_model(backend, &f.encode(ck, "pairs"), &ck.config).unwrap();
        let mut tape = Tape::inference(backend.clone());
        let logits = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        let loss = model
            .loss(&mut tape, &logits, &f.labels(backend, "pairs"))
            .unwrap();
        let mut out = backend.to_f64(logits.value()).unwrap();
        out.extend(backend.to_f64(loss.value()).unwrap());
        out
    }
    let reference = run(&ck, &CpuBackend::f64(), &plan);
    let cpu_bf16 = CpuBackend::bf16();
    let cuda = CudaBackend::hardware_or_emulated(DType::BF16)
        .unwrap_or_else(|e| panic!("no CUDA backend, not even the CPU stand-in: {e}"));
    for (name, got) in [
        ("cpu-bf16", run(&ck, &cpu_bf16, &plan)),
        ("cuda bf16", run(&ck, &cuda, &plan)),
    ] {
        let e = rel_err(&got, &reference);
        println!("{name}: logits and loss rel err {e:.2e}");
        assert!(e <= 2e-2, "{name}: {e:e}");
    }
    // The projection is stored in bf16 where the frozen weights are.
    let mut model = common::trained(&ck, &cpu_bf16, &plan, 3);
    model.store_frozen_weights(&cpu_bf16).unwrap();
    let project = &model.bert.embeddings.project.as_ref().unwrap().weight.value;
    assert_eq!(project.dtype(), cpu_bf16.frozen_dtype());
}
