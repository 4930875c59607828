//! ERNIE checkpoints, against transformers + PEFT in float64 on a tiny random ERNIE with
//! `use_task_id`, as ERNIE 3.0's checkpoints are (`tests/fixtures/tiny-ernie/`, written by its
//! `make_fixture.py`): tokens, logits, loss and every parameter's gradient (the task-type
//! table's row 0 included), PEFT adapters both ways, merged checkpoints, the command line, and
//! the CUDA backend (through the stand-in where there is no GPU) against the f64 CPU reference.

use crate::common;

use common::family_fixture::{
    identity_changes_with, read_tensors, remove_tokenizer_class, write_tensors, FamilyFixture,
};
use serde_json::Value;
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{BertConfig, Checkpoint, EncoderFamily};
use spafit::model::{BertClassifier, Labels, ModelInput};
use spafit::nn::DropoutPlan;
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};
use spafit::tensor::Shape;
use spafit::text::TextInput;

const TASK_TYPES: &str = "bert.embeddings.task_type_embeddings.weight";

/// The fixture, or where `SPAFIT_ERNIE_FIXTURE` says.
fn fixture() -> FamilyFixture {
    FamilyFixture::new("tiny-ernie", "SPAFIT_ERNIE_FIXTURE", EncoderFamily::Ernie)
}

/// ERNIE's tokenizer is BERT's (transformers maps the model type to `BertTokenizer`): ids,
/// attention mask and segment ids as transformers gives them, from tokenizer.json and from
/// vocab.txt alone with no class named (as the published ERNIE 3.0 folders ship it).
#[test]
fn ernie_tokens_match_transformers() {
    let f = fixture();
    let ck = f.checkpoint("model");
    assert_eq!(ck.config.task_type_rows(), Some(3));
    assert!(f.expected()["inputs"]["tokens_pairs"]
        .get("token_type_ids")
        .is_some());
    f.check_tokens(&ck);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vocab");
    f.copy_model_with_vocab_txt(&dir);
    assert!(remove_tokenizer_class(&dir).is_some());
    f.check_tokens(&Checkpoint::open(&dir).unwrap());
}

/// Full fine-tuning in f64 without dropout: logits, loss and the gradient of every parameter
/// transformers differentiates under its names (`ernie.…`), for single texts and pairs; the
/// task-type table's gradient is row 0's alone, the row every token adds.
#[test]
fn ernie_logits_loss_and_every_gradient_match_transformers() {
    let f = fixture();
    let grads = f.check_every_gradient(&f.checkpoint("model"));
    let (_, table) = grads
        .iter()
        .find(|(n, _)| n == TASK_TYPES)
        .expect("the task-type table's gradient");
    let width = table.len() / 3;
    assert!(table[..width].iter().all(|&g| g != 0.0));
    assert!(table[width..].iter().all(|&g| g == 0.0));
}

/// The task-type table is part of the embeddings: it trains where they do (full
/// fine-tuning, --train-embeddings) and changes the adapter's identity of the base; without
/// `use_task_id` the table is not read, and the logits change (row 0 is not zero here).
#[test]
fn the_task_type_table_is_the_embeddings_and_only_with_use_task_id() {
    let f = fixture();
    let ck = f.checkpoint("model");
    let cpu = CpuBackend::f64();
    for (method, embeddings) in [
        (Method::Full, false),
        (Method::Spafit, false),
        (Method::Lora, true),
    ] {
        let mut config = PeftConfig::new(method).for_family(EncoderFamily::Ernie);
        config.n1 = Boundary::Layer(1);
        config.n2 = Boundary::Layer(2);
        config.train_embeddings = embeddings;
        let plan = PeftPlan::new(&config, 3).unwrap();
        let model = common::trained(&ck, &cpu, &plan, 3);
        assert_eq!(
            model.trainable_names().iter().any(|n| n == TASK_TYPES),
            method == Method::Full || embeddings,
            "{method}"
        );
    }
    assert!(identity_changes_with(
        &f.dir().join("model"),
        "ernie.embeddings.task_type_embeddings.weight"
    ));

    let tmp = tempfile::tempdir().unwrap();
    let without = tmp.path().join("model");
    f.copy_model(&without, |_| true);
    let path = without.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["use_task_id"] = Value::Bool(false);
    std::fs::write(&path, config.to_string()).unwrap();
    let plain = Checkpoint::open(&without).unwrap();
    assert_eq!(plain.config.task_type_rows(), None);
    let with = BertClassifier::from_fine_tuned(&ck, &cpu).unwrap();
    let read_without = BertClassifier::from_fine_tuned(&plain, &cpu).unwrap();
    assert!(read_without.bert.embeddings.task_type.is_none());
    assert_ne!(
        f.logits_of(&ck, &cpu, &with, "singles"),
        f.logits_of(&plain, &cpu, &read_without, "singles")
    );

    // A null count is refused as transformers refuses it, not read as its default.
    config["use_task_id"] = Value::Bool(true);
    config["task_type_vocab_size"] = Value::Null;
    let e = BertConfig::from_json(&config.to_string(), &path).unwrap_err();
    assert!(
        e.to_string().contains("`task_type_vocab_size` is null"),
        "{e}"
    );
    let c = BertConfig {
        task_type_vocab_size: Some(0),
        ..ck.config.clone()
    };
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("`task_type_vocab_size` is 0"), "{e}");
    let other = BertConfig {
        task_type_vocab_size: Some(4),
        ..ck.config.clone()
    };
    assert_eq!(
        ck.config.encoder_difference(&other).as_deref(),
        Some("task_type_vocab_size: 3 vs 4")
    );
}

/// ERNIE's multiple-choice and token-classification heads (named `classifier` too) are
/// another model's head, not a sequence classifier's: a fresh one replaces them.
#[test]
fn other_ernie_heads_are_foreign() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    for architecture in ["ErnieForMultipleChoice", "ErnieForTokenClassification"] {
        let dir = tmp.path().join(architecture);
        f.copy_model(&dir, |_| true);
        let path = dir.join("config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["architectures"] = serde_json::json!([architecture]);
        std::fs::write(&path, config.to_string()).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        assert_eq!(ck.foreign_head(), Some(architecture));
        assert_eq!(ck.classifier_outputs(), None);
    }
}

/// An ERNIE's tensors saved under BERT's prefix are refused with what the file holds instead
/// (transformers would draw every one of them afresh).
#[test]
fn ernie_weights_under_bert_names_are_refused_naming_the_prefix() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    f.copy_model(&dir, |_| true);
    let path = dir.join("model.safetensors");
    let renamed: Vec<_> = read_tensors(&path)
        .into_iter()
        .map(|(name, dtype, shape, values)| {
            let name = match name.strip_prefix("ernie.") {
                Some(rest) => format!("bert.{rest}"),
                None => name,
            };
            (name, dtype, shape, values)
        })
        .collect();
    write_tensors(&path, &renamed);
    let ck = Checkpoint::open(&dir).unwrap();
    let e = BertClassifier::from_fine_tuned(&ck, &CpuBackend::f64())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor `ernie.embeddings.word_embeddings.weight` is missing")
            && e.contains(
                "`bert.embeddings.word_embeddings.weight`, under another family's prefix"
            ),
        "{e}"
    );
}

/// A LoRA adapter written by PEFT's own `save_pretrained` gives PEFT's logits; spafit's
/// export holds exactly PEFT's tensors under ERNIE's names and imports back bit for bit;
/// PEFT's adapter merged into the base is an `ErnieForSequenceClassification` (the task-type
/// table kept) giving PEFT's logits.
#[test]
fn ernie_adapters_import_export_and_merge_as_peft() {
    let f = fixture();
    f.check_peft_adapter(&f.checkpoint("model"));
    f.check_export_beside_peft();
    let config = f.check_merge_of_peft_adapter("ErnieForSequenceClassification");
    assert_eq!(config["model_type"], "ernie");
    assert_eq!(config["use_task_id"], true);
}

/// Full fine-tuning (the task-type table trains) and SPAFIT on ERNIE on the CUDA backend
/// (the CPU stand-in without a GPU), f32, with dropout on: logits, loss and every trainable
/// gradient as the f64 CPU reference gives them.
#[test]
fn ernie_on_cuda_matches_the_f64_reference() {
    fixture().check_full_and_spafit_on_cuda();
}

/// The family's command-line check: SPAFIT on the CPU and on `cuda-emu` to the same losses,
/// `eval`, `predict` and `merge`.
#[test]
fn ernie_trains_evaluates_predicts_and_merges_from_the_command_line() {
    let f = fixture();
    f.check_command_line(&f.dir().join("model"));
}

/// `pad_token_id: null` is transformers' "no padding row" (`padding_idx=None`): the row of
/// id 0 then trains where the token stands inside a text, as it does not under the default
/// (absent: 0). RoBERTa, which counts positions from the padding id, refuses a null one, as
/// transformers fails on it.
#[test]
fn a_null_padding_id_leaves_no_row_untrained() {
    let f = fixture();
    let cpu = CpuBackend::f64();
    let word_row_0 = |pad_token_id: Option<Value>| -> Vec<f64> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        f.copy_model(&dir, |_| true);
        let path = dir.join("config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        match pad_token_id {
            Some(v) => config["pad_token_id"] = v,
            None => {
                config.as_object_mut().unwrap().remove("pad_token_id");
            }
        }
        std::fs::write(&path, config.to_string()).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        let encoded = ck
            .tokenizer(16)
            .unwrap()
            .encode_batch(&[TextInput::Single("a [PAD] movie")])
            .unwrap();
        assert!(
            encoded.input_ids[1..].contains(&0),
            "{:?}",
            encoded.input_ids
        );
        let mut model = BertClassifier::from_checkpoint(&ck, &cpu, 3, 0).unwrap();
        let plan = PeftPlan::new(&PeftConfig::new(Method::Full), 3).unwrap();
        model.apply_plan(&plan, &mut |_, s| cpu.zeros(s)).unwrap();
        let input = ModelInput::for_model(&cpu, &encoded, &ck.config).unwrap();
        let mut tape = Tape::new(cpu);
        let logits = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        let y = cpu.tensor_from_u32(Shape::new([1]), &[2]).unwrap();
        let loss = model.loss(&mut tape, &logits, &Labels::Classes(y)).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let words = grads.get("bert.embeddings.word_embeddings.weight").unwrap();
        cpu.to_f64(words).unwrap()[..40].to_vec()
    };
    assert!(word_row_0(None).iter().all(|&g| g == 0.0));
    assert!(word_row_0(Some(Value::from(0))).iter().all(|&g| g == 0.0));
    assert!(word_row_0(Some(Value::Null)).iter().any(|&g| g != 0.0));

    let json = serde_json::json!({
        "model_type": "roberta", "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 20,
        "pad_token_id": null
    });
    let e = BertConfig::from_json(&json.to_string(), std::path::Path::new("config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`pad_token_id` is null"), "{e}");
}
