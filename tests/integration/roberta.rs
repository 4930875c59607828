//! RoBERTa checkpoints, against transformers + PEFT in float64 on a tiny random RoBERTa
//! (`tests/fixtures/tiny-roberta/`, written by its `make_fixture.py`): tokens, logits, loss
//! and every parameter's gradient, PEFT adapters both ways, merged checkpoints, and the
//! CUDA backend (through the stand-in where there is no GPU) against the f64 CPU reference.

use crate::common;

use std::path::PathBuf;

use common::family_fixture::{read, sorted_names, FamilyFixture};
use common::{rel_err, u32_matrix};
use serde_json::Value;
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{Checkpoint, EncoderFamily, WeightsFile};
use spafit::model::{BertClassifier, Labels, ModelInput};
use spafit::nn::DropoutPlan;
use spafit::peft::{Method, PeftConfig, PeftPlan};
use spafit::tensor::Shape;
use spafit::text::{EncodedBatch, TextInput};

/// The fixture, or where `SPAFIT_ROBERTA_FIXTURE` says (the GPU check runs this test's
/// binary on another machine, from another folder).
fn fixture() -> FamilyFixture {
    FamilyFixture::new(
        "tiny-roberta",
        "SPAFIT_ROBERTA_FIXTURE",
        EncoderFamily::Roberta,
    )
}

fn fixture_dir() -> PathBuf {
    fixture().dir().to_path_buf()
}

fn checkpoint() -> Checkpoint {
    fixture().checkpoint("model")
}

fn expected() -> Value {
    fixture().expected()
}

/// The fixture's singles or pairs, tokenized by spafit.
fn encode(ck: &Checkpoint, inputs: &str) -> EncodedBatch {
    fixture().encode(ck, inputs)
}

#[test]
fn roberta_tokens_match_transformers() {
    // transformers gives RoBERTa no segment ids: its model reads segment 0 throughout.
    assert!(expected()["inputs"]["tokens_pairs"]
        .get("token_type_ids")
        .is_none());
    fixture().check_tokens(&checkpoint());
}

/// Which version of an added token counts, as in transformers 5.24
/// (`tests/fixtures/tiny-roberta/named_tokens.json`, from `make_named_tokens.py`):
/// roberta-base's layout — `<mask>` with `lstrip` in tokenizer.json beside a config naming
/// plain `"<mask>"`, with and without that config — strips the space before it; so does a
/// transformers 4 config listing the token so; `single_word` likewise; tokenizer.json's own
/// added token is kept unless the config lists its own; a model-specific named token
/// (`ent_token`) matches whole; `split_special_tokens` splits special tokens as text.
#[test]
fn named_tokens_keep_the_listed_version_as_in_transformers() {
    let path = fixture_dir().join("named_tokens.json");
    let e: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let n = common::tokenizer_variants::check_variants(&fixture_dir().join("model"), &e, |_, _| {});
    assert_eq!(n, 9);
}

/// The fixture's model folder copied to `to` with `keep` deciding which files come along.
fn copy_model(to: &std::path::Path, keep: impl Fn(&str) -> bool) {
    fixture().copy_model(to, keep)
}

/// Where `tokenizer_config.json` names no class, transformers picks RoBERTa's from
/// `config.json`, and so does spafit (padding with `<pad>`, not id 0); a checkpoint with
/// only `vocab.json` and `merges.txt` (written by tokenizers' own `BPE.save`; its
/// `make_vocab_files.py` checked transformers' ids from them) tokenizes the same.
#[test]
fn roberta_tokens_without_a_tokenizer_class_or_a_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let no_class = tmp.path().join("no-class");
    copy_model(&no_class, |name| name != "tokenizer_config.json");
    let vocab_files = tmp.path().join("vocab-files");
    copy_model(&vocab_files, |name| name != "tokenizer.json");
    for file in ["vocab.json", "merges.txt"] {
        std::fs::copy(
            fixture_dir().join("vocab-files").join(file),
            vocab_files.join(file),
        )
        .unwrap();
    }
    for dir in [no_class, vocab_files] {
        let ck = Checkpoint::open(&dir).unwrap();
        assert_eq!(ck.tokenizer(24).unwrap().pad_id(), 1, "{}", dir.display());
        for inputs in ["singles", "pairs"] {
            let ours = encode(&ck, inputs);
            let theirs = &expected()["inputs"][format!("tokens_{inputs}")];
            assert_eq!(
                ours.input_ids,
                u32_matrix(&theirs["input_ids"]),
                "{}: {inputs}",
                dir.display()
            );
            assert!(ours.token_type_ids.iter().all(|&t| t == 0));
        }
    }
}

/// A text holding `<pad>` itself: transformers gives that token the padding position and
/// numbers the tokens after it one lower (positions follow the ids, not the attention mask),
/// and so does spafit (`pad_inside.json`, from its `make_pad_inside.py`).
#[test]
fn a_padding_token_inside_a_text_takes_the_padding_position_as_in_transformers() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("pad_inside.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<&str> = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let batch: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
    let encoded = ck.tokenizer(24).unwrap().encode_batch(&batch).unwrap();
    assert_eq!(encoded.input_ids, u32_matrix(&reference["input_ids"]));
    assert_eq!(
        encoded.attention_mask,
        u32_matrix(&reference["attention_mask"])
    );
    let model = BertClassifier::from_fine_tuned(&ck, &cpu).unwrap();
    let input = ModelInput::for_model(&cpu, &encoded, &ck.config).unwrap();
    let mut tape = Tape::inference(cpu);
    let logits = model
        .forward(&mut tape, &input, &mut DropoutPlan::eval())
        .unwrap();
    let want: Vec<f64> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let e = rel_err(&cpu.to_f64(logits.value()).unwrap(), &want);
    println!("<pad> inside: logits rel err {e:.2e}");
    assert!(e <= 1e-12, "{e:e}");
    // Full fine-tuning: the embeddings' gradients are transformers', whose padding rows
    // (`padding_idx`) get none although `<pad>` stands inside the texts.
    let mut model = BertClassifier::from_checkpoint(&ck, &cpu, 3, 0).unwrap();
    let plan = PeftPlan::new(&PeftConfig::new(Method::Full), 3).unwrap();
    model.apply_plan(&plan, &mut |_, s| cpu.zeros(s)).unwrap();
    let mut tape = Tape::new(cpu);
    let logits = model
        .forward(&mut tape, &input, &mut DropoutPlan::eval())
        .unwrap();
    let y = cpu.tensor_from_u32(Shape::new([3]), &[0, 1, 0]).unwrap();
    let loss = model.loss(&mut tape, &logits, &Labels::Classes(y)).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let reference = WeightsFile::open(&fixture_dir().join("pad_inside.safetensors")).unwrap();
    for (ours, rows) in [
        ("bert.embeddings.word_embeddings.weight", 300),
        ("bert.embeddings.position_embeddings.weight", 40),
    ] {
        let got = cpu.to_f64(grads.get(ours).unwrap()).unwrap();
        let want = read(
            &reference,
            &format!("grad.{}", EncoderFamily::Roberta.hf_name(ours)),
        );
        assert_eq!(got.len(), rows * 64);
        assert!(
            got[64..128].iter().all(|&g| g == 0.0),
            "{ours}: row 1 trains"
        );
        let e = rel_err(&got, &want);
        println!("<pad> inside: {ours} gradient rel err {e:.2e}");
        assert!(e <= 1e-9, "{ours}: {e:e}");
    }
}

/// A RoBERTa base as the hub ships one (`RobertaForMaskedLM`: a pooler no sequence classifier
/// reads, a language-model head, no classification head): the same encoder as the fixture's
/// by identity, a fresh head whose dense map trains, and a merge under exactly
/// `RobertaForSequenceClassification`'s names (no pooler, no `lm_head`).
#[test]
fn a_masked_lm_base_is_the_same_encoder_and_merges_to_a_sequence_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = tmp.path().join("masked-lm");
    copy_model(&base_dir, |name| name != "model.safetensors");
    let bytes = std::fs::read(fixture_dir().join("model/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("classifier."))
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    let mut rng = spafit::rng::SplitMix::new(3);
    for (name, shape) in [
        ("roberta.pooler.dense.weight", vec![64, 64]),
        ("roberta.pooler.dense.bias", vec![64]),
        ("lm_head.dense.weight", vec![64, 64]),
        ("lm_head.bias", vec![300]),
    ] {
        let n: usize = shape.iter().product();
        let data = common::nonzero(&mut rng, n)
            .into_iter()
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect();
        owned.push((name.to_string(), shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d);
            (n.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &base_dir.join("model.safetensors")).unwrap();
    let base = Checkpoint::open(&base_dir).unwrap();
    let fixture = checkpoint();
    assert_eq!(
        base.weights.encoder_sha256().unwrap(),
        fixture.weights.encoder_sha256().unwrap(),
        "the unread pooler and the heads are not the encoder"
    );
    assert_eq!(base.classifier_outputs(), None);
    let cpu = CpuBackend::f64();
    let model = common::trained(&base, &cpu, &lora_plan(), 2);
    assert!(model
        .trainable_names()
        .contains(&"bert.pooler.dense.weight".to_string()));
    let out = tmp.path().join("merged");
    let kind = spafit::data::TaskKind::Classification {
        labels: vec!["neg".into(), "pos".into()],
    };
    spafit::adapter::save_merged(
        &out,
        &cpu,
        model,
        &kind,
        &base,
        spafit::adapter::MergedDType::F32,
        None,
    )
    .unwrap();
    assert_eq!(
        sorted_names(&WeightsFile::open(&out.join("model.safetensors")).unwrap()),
        sorted_names(&fixture.weights)
    );
}

/// Full fine-tuning in f64 without dropout: logits, loss and the gradient of every parameter
/// (looked up under transformers' names), for single texts and for pairs.
#[test]
fn roberta_logits_loss_and_every_gradient_match_transformers() {
    fixture().check_every_gradient(&checkpoint());
}

/// A LoRA adapter written by PEFT's own `save_pretrained` loads and gives PEFT's logits.
#[test]
fn a_peft_roberta_adapter_gives_peft_logits() {
    fixture().check_peft_adapter(&checkpoint());
}

/// An adapter PEFT saved without its head (no `task_type`, so no `modules_to_save`) runs on
/// the checkpoint's own two-layer head (`classifier.dense`, `classifier.out_proj`), as in PEFT.
#[test]
fn a_peft_roberta_adapter_without_a_head_runs_on_the_checkpoints_own() {
    fixture().check_base_head_adapter(&checkpoint());
    // `bias = "all"` saves the head's biases alone: its weights are the checkpoint's.
    fixture().check_base_head_adapter_in(
        &checkpoint(),
        "peft-lora-base-head-bias-all",
        &["weight"],
    );
    // Where `modules_to_save` saves the head whole, half of it is a damaged file, not a part
    // left to the base (PEFT's loader fails on it), though the base has a head to take from.
    let tmp = tempfile::tempdir().unwrap();
    common::family_fixture::copy_folder(&fixture_dir().join("peft-lora"), tmp.path(), |_| true);
    let weights = tmp.path().join("adapter_model.safetensors");
    let mut tensors = common::family_fixture::read_tensors(&weights);
    tensors.retain(|(n, _, _, _)| !(n.contains("out_proj") && n.ends_with("bias")));
    common::family_fixture::write_tensors(&weights, &tensors);
    let e = match spafit::adapter::import_peft(tmp.path(), &checkpoint(), &CpuBackend::f64()) {
        Ok(_) => panic!("half a head saved whole loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("classifier.out_proj.bias") && e.contains("saves `classifier.out_proj` whole"),
        "{e}"
    );
}

/// A copy of the fixture's model at `base` whose config.json names its three classes as an
/// MNLI model might (`id2label`), in another order than GLUE's; the names.
fn base_naming_mnli_classes(base: &std::path::Path) -> [&'static str; 3] {
    base_naming_mnli_classes_holding(base, |_| true)
}

/// [`base_naming_mnli_classes`] with only the tensors `keep` accepts.
fn base_naming_mnli_classes_holding(
    base: &std::path::Path,
    keep: impl Fn(&str) -> bool,
) -> [&'static str; 3] {
    copy_model(base, keep);
    let names = ["neutral", "contradiction", "entailment"];
    let config_path = base.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["id2label"] = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), Value::from(*n)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["label2id"] = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), Value::from(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    names
}

/// A PEFT adapter records no class names: its model takes the base's id2label, as
/// transformers gives it. With MNLI's names in another order there than GLUE's, `predict
/// --task mnli` names each probability as PEFT's model read by that id2label does (the head
/// reordered to GLUE's order, not matched by position).
#[test]
fn a_peft_adapters_classes_are_named_by_the_bases_id2label() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = expected()["inputs"]["pairs"].clone();
    let mut tsv = String::from("sentence1\tsentence2\tgold_label\n");
    for pair in pairs.as_array().unwrap() {
        tsv += &format!(
            "{}\t{}\tneutral\n",
            pair[0].as_str().unwrap(),
            pair[1].as_str().unwrap()
        );
    }
    std::fs::create_dir_all(tmp.path().join("glue/MNLI")).unwrap();
    std::fs::write(tmp.path().join("glue/MNLI/dev_matched.tsv"), tsv).unwrap();
    // On the base's own head (an adapter without one), and on a base holding no head, whose
    // id2label still names the outputs (an adapter with its head): PEFT's logits for each.
    let headless_logits = read(
        &WeightsFile::open(&fixture_dir().join("peft-lora-base-head/logits.safetensors")).unwrap(),
        "pairs.logits",
    );
    let cases = [
        ("with-head", "peft-lora-base-head", headless_logits),
        (
            "bare",
            "peft-lora",
            read(&fixture().reference(), "peft.pairs.logits"),
        ),
    ];
    for (name, adapter, theirs) in cases {
        let base = tmp.path().join(name);
        let names = base_naming_mnli_classes_holding(&base, |tensor| {
            name == "with-head" || !tensor.starts_with("classifier.")
        });
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args(["predict", "--task", "mnli", "--split", "dev_matched"])
            .args(["--max-len", "24", "--dtype", "f64", "--format", "jsonl"])
            .arg("--model")
            .arg(&base)
            .arg("--adapter")
            .arg(fixture_dir().join(adapter))
            .arg("--glue-dir")
            .arg(tmp.path().join("glue"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert!(
            err.contains("in another order: its head is reordered"),
            "{name}: {err}"
        );
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        for (line, logits) in lines.iter().zip(theirs.chunks(3)) {
            let total: f64 = logits.iter().map(|z| z.exp()).sum();
            for (class, z) in names.iter().zip(logits) {
                let ours = line["probabilities"][class].as_f64().unwrap();
                assert!(
                    (ours - z.exp() / total).abs() < 1e-9,
                    "{name}, {class}: {ours} vs {line}"
                );
            }
        }
    }
    // Refused for data of two classes, the head is told by the classes its model takes.
    std::fs::create_dir_all(tmp.path().join("glue/SST-2")).unwrap();
    std::fs::write(
        tmp.path().join("glue/SST-2/dev.tsv"),
        "sentence\tlabel\na fine film\t1\n",
    )
    .unwrap();
    let names = base_naming_mnli_classes(&tmp.path().join("named"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args(["eval", "--task", "sst2", "--max-len", "24"])
        .arg("--model")
        .arg(tmp.path().join("named"))
        .arg("--adapter")
        .arg(fixture_dir().join("peft-lora"))
        .arg("--glue-dir")
        .arg(tmp.path().join("glue"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("has 3 outputs (its classes not recorded with it)")
            && err.contains(&format!("its model takes the base's classes {names:?}")),
        "{err}"
    );
}

/// The other way: a head trained on GLUE's MNLI, whose class order is not the base's
/// `id2label`, is exported for PEFT in the base's order, since transformers names a PEFT
/// adapter's outputs by it: the export's head row of each base name is best/'s row of that
/// name, and its note records the base's order.
#[test]
fn a_peft_export_follows_the_bases_id2label_order() {
    use common::family_fixture::read_tensors;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("model");
    let names = base_naming_mnli_classes(&base);
    let glue_names = ["entailment", "contradiction", "neutral"];
    let pairs = expected()["inputs"]["pairs"].clone();
    let mut tsv = String::from("sentence1\tsentence2\tgold_label\n");
    for (i, pair) in pairs.as_array().unwrap().iter().enumerate() {
        tsv += &format!(
            "{}\t{}\t{}\n",
            pair[0].as_str().unwrap(),
            pair[1].as_str().unwrap(),
            glue_names[i % 3]
        );
    }
    let glue = tmp.path().join("glue");
    std::fs::create_dir_all(glue.join("MNLI")).unwrap();
    for split in ["train", "dev_matched", "dev_mismatched"] {
        std::fs::write(glue.join(format!("MNLI/{split}.tsv")), &tsv).unwrap();
    }
    let (run, export) = (tmp.path().join("run"), tmp.path().join("run.peft"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args([
            "train",
            "--task",
            "mnli",
            "--method",
            "lora",
            "--max-len",
            "24",
        ])
        .args(["--max-steps", "1", "--quiet"])
        .arg("--model")
        .arg(&base)
        .arg("--glue-dir")
        .arg(&glue)
        .arg("--output")
        .arg(&run)
        .arg("--export-peft")
        .arg(&export)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the export's head follows the base's id2label order"),
        "{err}"
    );
    let note: Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("spafit_export.json")).unwrap())
            .unwrap();
    assert_eq!(note["labels"], serde_json::json!(names));
    let best: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best/adapter.json")).unwrap())
            .unwrap();
    let trained: Vec<String> = serde_json::from_value(best["labels"].clone()).unwrap();
    assert_ne!(trained, names, "the data's order is GLUE's, not the base's");
    let rows_of = |path: &std::path::Path, tensor: &str| -> Vec<Vec<f64>> {
        let (_, _, shape, values) = read_tensors(path)
            .into_iter()
            .find(|(n, _, _, _)| n == tensor)
            .unwrap_or_else(|| panic!("no {tensor} in {}", path.display()));
        values.chunks(shape[1]).map(<[f64]>::to_vec).collect()
    };
    let exported = rows_of(
        &export.join("adapter_model.safetensors"),
        "base_model.model.classifier.out_proj.weight",
    );
    let saved = rows_of(&run.join("best/adapter.safetensors"), "classifier.weight");
    for (i, name) in names.iter().enumerate() {
        let j = trained.iter().position(|t| t == name).unwrap();
        assert_eq!(exported[i], saved[j], "{name}");
    }
}

/// A LoRA plan like the PEFT fixture's (r 4 on query and value of layers 1 and 2).
fn lora_plan() -> PeftPlan {
    fixture().lora_plan()
}

/// spafit's export holds exactly the tensors PEFT's own `save_pretrained` writes for the same
/// adapter on RoBERTa (the head as `classifier.dense` and `classifier.out_proj`, the layers
/// under `roberta.`), each in PEFT's shape, and reads back to the same logits bit for bit.
#[test]
fn a_roberta_adapter_exports_under_peft_names_and_imports_back() {
    fixture().check_export_beside_peft();
}

/// PEFT's adapter merged into its RoBERTa base is a `RobertaForSequenceClassification` with
/// the base's tensor names, and gives PEFT's logits as a checkpoint of its own.
#[test]
fn a_merged_roberta_adapter_is_a_roberta_sequence_classifier() {
    let config = fixture().check_merge_of_peft_adapter("RobertaForSequenceClassification");
    assert_eq!(config["model_type"], "roberta");
}

/// SPAFIT on RoBERTa on the CUDA backend (the CPU stand-in without a GPU), f32, with dropout
/// on: logits, loss and every trainable gradient as the f64 CPU reference gives them.
#[test]
fn roberta_on_cuda_matches_the_f64_reference() {
    let mut config = PeftConfig::new(Method::Spafit);
    config.n1 = spafit::peft::Boundary::Layer(1);
    config.n2 = spafit::peft::Boundary::Layer(2);
    config.lora.rank = 4;
    let plan = PeftPlan::new(&config.clone().for_family(EncoderFamily::Roberta), 3).unwrap();
    assert!(plan.train_pooler, "RoBERTa's head trains whole");
    fixture().check_on_cuda(&[config]);
}

/// `spafit train`, `eval`, `predict`, `merge` on a RoBERTa checkpoint from the command line,
/// on the CPU and on `cuda-emu`, whose logged losses agree (f32, ≤ 1e-4 relative).
#[test]
fn roberta_trains_evaluates_predicts_and_merges_from_the_command_line() {
    fixture().check_command_line(&fixture_dir().join("model"));
}

/// Texts far longer than the cut, which spafit tokenizes only as far as it keeps (RoBERTa's
/// byte-level split, like BERT's, makes a prefix's tokens the text's first ones when cut
/// before whitespace that follows a non-space), encode to the ids transformers gives them
/// whole (`long_texts.json`, from `make_long_texts.py`): runs of spaces, tabs, newlines,
/// non-breaking spaces and literal special tokens included; and a 4 MB text as its first
/// 12 KB do.
#[test]
fn long_roberta_texts_encode_as_transformers_encodes_them_whole() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("long_texts.json")).unwrap(),
    )
    .unwrap();
    let text = |name: &Value| fixture["texts"][name.as_str().unwrap()].as_str().unwrap();
    let ck = checkpoint();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 21);
    for case in cases {
        let max_len = case["max_len"].as_u64().unwrap() as usize;
        let input = match &case["b"] {
            Value::Null => TextInput::Single(text(&case["a"])),
            b => TextInput::Pair(text(&case["a"]), text(b)),
        };
        let got = ck.tokenizer(max_len).unwrap().encode(input).unwrap();
        let want: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got.ids, want, "{} + {} at {max_len}", case["a"], case["b"]);
    }
    let mixed = text(&Value::from("mixed_12k"));
    let huge = mixed.repeat(4_000_000 / mixed.len());
    let case = cases
        .iter()
        .find(|c| c["a"] == "mixed_12k" && c["b"].is_null() && c["max_len"] == 38)
        .unwrap();
    let got = ck
        .tokenizer(38)
        .unwrap()
        .encode(TextInput::Single(&huge))
        .unwrap();
    assert_eq!(
        got.ids,
        u32_matrix(&Value::Array(vec![case["input_ids"].clone()]))
    );
}

/// Base weights opened without their config are read by BERT's names; checking a RoBERTa
/// model against them says so rather than calling them other weights.
#[test]
fn a_roberta_base_read_by_bert_names_is_named_as_such() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let model = BertClassifier::from_checkpoint(&ck, &cpu, 3, 0).unwrap();
    model.check_base(&ck.weights).unwrap();
    let as_bert = WeightsFile::open(ck.weights.path()).unwrap();
    assert_eq!(as_bert.family(), EncoderFamily::Bert);
    let e = model.check_base(&as_bert).unwrap_err().to_string();
    assert!(
        e.contains("read by BERT names where the model is a RoBERTa encoder")
            && e.contains("WeightsFile::read_as"),
        "{e}"
    );
    model
        .check_base(&as_bert.read_as(EncoderFamily::Roberta))
        .unwrap();
}
