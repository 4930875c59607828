//! ELECTRA checkpoints, against transformers + PEFT in float64 on a tiny random ELECTRA whose
//! embeddings are narrower than its hidden size (`tests/fixtures/tiny-electra/`, written by its
//! `make_fixture.py`): tokens, logits, loss and every parameter's gradient (the embeddings'
//! projection and the GELU head included), PEFT adapters both ways, merged checkpoints, a
//! discriminator checkpoint as the base, the CUDA backend (through the stand-in where there
//! is no GPU) against the f64 CPU reference, and the command line.

mod common;

use std::path::PathBuf;

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
use spafit::text::EncodedBatch;

/// The fixture, or where `SPAFIT_ELECTRA_FIXTURE` says (the GPU check runs this test's
/// binary on another machine, from another folder).
fn fixture_dir() -> PathBuf {
    std::env::var_os("SPAFIT_ELECTRA_FIXTURE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-electra"),
        PathBuf::from,
    )
}

fn checkpoint() -> Checkpoint {
    Checkpoint::open(fixture_dir().join("model")).unwrap()
}

fn discriminator() -> Checkpoint {
    Checkpoint::open(fixture_dir().join("discriminator")).unwrap()
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reference() -> WeightsFile {
    WeightsFile::open(&fixture_dir().join("expected.safetensors")).unwrap()
}

fn read(file: &WeightsFile, name: &str) -> Vec<f64> {
    let shape = file
        .shape(name)
        .unwrap_or_else(|| panic!("the reference lacks {name}"));
    file.read_f64(name, &Shape::new(shape)).unwrap()
}

/// The fixture's singles or pairs, tokenized by spafit.
fn encode(ck: &Checkpoint, inputs: &str) -> EncodedBatch {
    let e = expected();
    let max_len = e["inputs"]["max_len"].as_u64().unwrap() as usize;
    let rows = common::text_rows(&e["inputs"][inputs]);
    let batch = common::text_inputs(&rows);
    ck.tokenizer(max_len).unwrap().encode_batch(&batch).unwrap()
}

/// A copy of the fixture's model folder in `dir`, of the files `keep` keeps.
fn copy_model(dir: &std::path::Path, keep: impl Fn(&str) -> bool) -> PathBuf {
    let to = dir.join("model");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(fixture_dir().join("model")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if keep(&name) {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
    to
}

/// A tensor of a safetensors file: name, dtype (F32 or F64), shape, values.
type Stored = (String, safetensors::Dtype, Vec<usize>, Vec<f64>);

/// Writes `tensors` as a safetensors file at `path`, each in its dtype.
fn write_tensors(path: &std::path::Path, tensors: &[Stored]) {
    use safetensors::Dtype;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dtype, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
            Dtype::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            other => panic!("{other:?}"),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, dtype, shape, _), data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
            (name.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Every tensor of the f32 or f64 safetensors file at `path`.
fn read_tensors(path: &std::path::Path) -> Vec<Stored> {
    use safetensors::Dtype;
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                other => panic!("{name}: {other:?}"),
            };
            (name, view.dtype(), view.shape().to_vec(), values)
        })
        .collect()
}

fn sorted_names(file: &WeightsFile) -> Vec<String> {
    let mut names = file.names().to_vec();
    names.sort();
    names
}

fn labels<B: Backend>(backend: &B, inputs: &str) -> Labels<B> {
    let y = u32_matrix(&Value::Array(vec![
        expected()["inputs"]["labels"][inputs].clone()
    ]));
    Labels::Classes(backend.tensor_from_u32(Shape::new([y.len()]), &y).unwrap())
}

fn logits_of<B: Backend>(
    ck: &Checkpoint,
    backend: &B,
    model: &BertClassifier<B>,
    inputs: &str,
) -> Vec<f64> {
    let input = ModelInput::for_model(backend, &encode(ck, inputs), &ck.config).unwrap();
    let mut tape = Tape::inference(backend.clone());
    let out = model
        .forward(&mut tape, &input, &mut DropoutPlan::eval())
        .unwrap();
    backend.to_f64(out.value()).unwrap()
}

/// ElectraTokenizer is BERT's: ids, attention mask and segment ids (which ELECTRA reads,
/// unlike RoBERTa) as transformers gives them; the same where `tokenizer_config.json` names no
/// class, as the published ELECTRA folders' configs do (transformers then takes the model
/// type's, `BertTokenizer` again).
#[test]
fn electra_tokens_match_transformers() {
    let ck = checkpoint();
    assert_eq!(ck.config.family(), EncoderFamily::Electra);
    assert!(ck.config.projects_embeddings());
    let tmp = tempfile::tempdir().unwrap();
    let unnamed = copy_model(tmp.path(), |name| name != "tokenizer_config.json");
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("model/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert!(config
        .as_object_mut()
        .unwrap()
        .remove("tokenizer_class")
        .is_some());
    std::fs::write(unnamed.join("tokenizer_config.json"), config.to_string()).unwrap();
    let unnamed = Checkpoint::open(&unnamed).unwrap();
    for (ck, inputs) in [
        (&ck, "singles"),
        (&ck, "pairs"),
        (&unnamed, "singles"),
        (&unnamed, "pairs"),
    ] {
        let ours = encode(ck, inputs);
        let theirs = &expected()["inputs"][format!("tokens_{inputs}")];
        assert_eq!(ours.input_ids, u32_matrix(&theirs["input_ids"]), "{inputs}");
        assert_eq!(
            ours.attention_mask,
            u32_matrix(&theirs["attention_mask"]),
            "{inputs}"
        );
        assert_eq!(
            ours.token_type_ids,
            u32_matrix(&theirs["token_type_ids"]),
            "{inputs}"
        );
    }
}

/// Full fine-tuning in f64 without dropout: logits, loss and the gradient of every parameter
/// transformers differentiates (looked up under its names: `electra.embeddings_project`,
/// `classifier.dense`, `classifier.out_proj`), for single texts and for pairs.
#[test]
fn electra_logits_loss_and_every_gradient_match_transformers() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let reference = reference();
    let family = ck.config.family();
    for inputs in ["singles", "pairs"] {
        let mut model = BertClassifier::from_checkpoint(&ck, &cpu, 3, 0).unwrap();
        let plan = PeftPlan::new(&PeftConfig::new(Method::Full), 3).unwrap();
        model.apply_plan(&plan, &mut |_, s| cpu.zeros(s)).unwrap();
        let input = ModelInput::for_model(&cpu, &encode(&ck, inputs), &ck.config).unwrap();
        let mut tape = Tape::new(cpu);
        let logits = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        let loss = model
            .loss(&mut tape, &logits, &labels(&cpu, inputs))
            .unwrap();
        let e = rel_err(
            &cpu.to_f64(logits.value()).unwrap(),
            &read(&reference, &format!("{inputs}.logits")),
        );
        println!("{inputs}: logits rel err {e:.2e}");
        assert!(e <= 1e-12, "{inputs}: logits {e:e}");
        let e = rel_err(
            &cpu.to_f64(loss.value()).unwrap(),
            &read(&reference, &format!("{inputs}.loss")),
        );
        assert!(e <= 1e-12, "{inputs}: loss {e:e}");
        let grads = tape.backward(&loss).unwrap();
        let mut checked = 0;
        let mut worst: (f64, String) = (0.0, String::new());
        for p in model.params() {
            let theirs = format!("{inputs}.grad.{}", family.hf_name(&p.name));
            let want = read(&reference, &theirs);
            let ours = cpu
                .to_f64(
                    grads
                        .get(&p.name)
                        .unwrap_or_else(|| panic!("no gradient for {}", p.name)),
                )
                .unwrap();
            // A key bias's gradient is zero (softmax ignores a shift shared by a row's
            // scores): both sides hold rounding noise only.
            let e = if p.name.ends_with("attention.self.key.bias") {
                ours.iter().chain(&want).fold(0.0f64, |m, v| m.max(v.abs()))
            } else {
                rel_err(&ours, &want)
            };
            assert!(
                e <= 1e-9,
                "{inputs}: gradient of {} ({theirs}) {e:e}",
                p.name
            );
            if e > worst.0 {
                worst = (e, p.name.clone());
            }
            checked += 1;
        }
        println!(
            "{inputs}: worst gradient rel err {:.2e} ({})",
            worst.0, worst.1
        );
        let theirs = reference
            .names()
            .iter()
            .filter(|n| n.starts_with(&format!("{inputs}.grad.")))
            .count();
        assert_eq!(checked, theirs, "{inputs}: gradients compared");
        assert!(
            grads.get("bert.embeddings_project.weight").is_some(),
            "the projection trains under full fine-tuning"
        );
    }
}

/// A LoRA adapter written by PEFT's own `save_pretrained` loads and gives PEFT's logits, on
/// the sequence classifier it was trained on and on the discriminator checkpoint, which holds
/// the same encoder under another head (the adapter brings its own).
#[test]
fn a_peft_electra_adapter_gives_peft_logits_on_either_checkpoint() {
    let cpu = CpuBackend::f64();
    for ck in [checkpoint(), discriminator()] {
        let (model, _) =
            spafit::adapter::import_peft(&fixture_dir().join("peft-lora"), &ck, &cpu).unwrap();
        for inputs in ["singles", "pairs"] {
            let e = rel_err(
                &logits_of(&ck, &cpu, &model, inputs),
                &read(&reference(), &format!("peft.{inputs}.logits")),
            );
            println!(
                "PEFT adapter on {}, {inputs}: logits rel err {e:.2e}",
                ck.dir().display()
            );
            assert!(e <= 1e-12, "{inputs}: {e:e}");
        }
    }
}

/// The discriminator checkpoint (`ElectraForPreTraining`) is the same encoder: the same
/// identity for adapters, no classifier head of ours, a fresh head that trains whole.
#[test]
fn a_discriminator_is_the_same_encoder_under_a_fresh_head() {
    let (disc, ck) = (discriminator(), checkpoint());
    assert_eq!(disc.config.family(), EncoderFamily::Electra);
    assert_eq!(disc.weights.encoder_sha256(), ck.weights.encoder_sha256());
    assert_eq!(disc.classifier_outputs(), None);
    assert_eq!(disc.foreign_head(), None);
    // The identity counts the projection and not the discriminator's head: one value changed
    // in each.
    let changed_in = |tensor: &str| {
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture_dir().join("discriminator")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
        let path = tmp.path().join("model.safetensors");
        let mut tensors = read_tensors(&path);
        let (_, _, _, values) = tensors.iter_mut().find(|t| t.0 == tensor).unwrap();
        values[3] += 0.25;
        write_tensors(&path, &tensors);
        let copy = Checkpoint::open(tmp.path()).unwrap();
        copy.weights.encoder_sha256() != disc.weights.encoder_sha256()
    };
    assert!(changed_in("electra.embeddings_project.weight"));
    assert!(!changed_in("discriminator_predictions.dense.weight"));
    let cpu = CpuBackend::f64();
    let model = common::trained(&disc, &cpu, &lora_plan(), 2);
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

/// A LoRA plan like the PEFT fixture's (r 4 on query and value of layers 1 and 2).
fn lora_plan() -> PeftPlan {
    let mut config = PeftConfig::new(Method::Lora).for_family(EncoderFamily::Electra);
    config.lora.rank = 4;
    config.lora.alpha = 8.0;
    config.lora_layers = Some(vec![1, 2]);
    PeftPlan::new(&config, 3).unwrap()
}

fn export(dir: &std::path::Path, model: &BertClassifier<CpuBackend>, plan: &PeftPlan) {
    let ck = checkpoint();
    spafit::adapter::export_peft(
        dir,
        &CpuBackend::f64(),
        model,
        plan,
        &spafit::adapter::PeftExportRecord {
            base_model_name_or_path: "tiny-electra",
            labels: None,
            inputs: spafit::adapter::TrainingInputs {
                max_len: Some(24),
                text_pairs: Some(false),
            },
            run_dir: None,
            base: Some(&ck.weights),
        },
    )
    .unwrap();
}

/// spafit's export holds exactly the tensors PEFT's own `save_pretrained` writes for the same
/// adapter on ELECTRA (the head as `classifier.dense` and `classifier.out_proj`, the layers
/// under `electra.`), each in PEFT's shape and with the model's values, and reads back to the
/// same logits bit for bit. Where the embeddings train, the projection is saved with them.
#[test]
fn an_electra_adapter_exports_under_peft_names_and_imports_back() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let plan = lora_plan();
    let model = common::trained(&ck, &cpu, &plan, 3);
    let dir = tempfile::tempdir().unwrap();
    export(dir.path(), &model, &plan);
    let ours = WeightsFile::open(&dir.path().join("adapter_model.safetensors")).unwrap();
    let peft =
        WeightsFile::open(&fixture_dir().join("peft-lora/adapter_model.safetensors")).unwrap();
    let names = sorted_names(&ours);
    assert_eq!(names, sorted_names(&peft));
    for name in &names {
        assert_eq!(ours.shape(name), peft.shape(name), "{name}");
    }
    for p in model.params().into_iter().filter(|p| p.trainable) {
        let theirs = format!(
            "base_model.model.{}",
            EncoderFamily::Electra.hf_name(&p.name)
        );
        let shape = Shape::new(ours.shape(&theirs).unwrap());
        assert_eq!(
            ours.read_f64(&theirs, &shape).unwrap(),
            cpu.to_f64(&p.value).unwrap(),
            "{theirs}"
        );
    }
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier"]));
    assert!(config["target_modules"]
        .as_str()
        .unwrap()
        .starts_with("electra\\.encoder"));
    let (back, _) = spafit::adapter::import_peft(dir.path(), &ck, &cpu).unwrap();
    for inputs in ["singles", "pairs"] {
        assert_eq!(
            logits_of(&ck, &cpu, &back, inputs),
            logits_of(&ck, &cpu, &model, inputs),
            "{inputs}"
        );
    }

    let mut config = PeftConfig::new(Method::Lora).for_family(EncoderFamily::Electra);
    config.train_embeddings = true;
    let with_embeddings = PeftPlan::new(&config, 3).unwrap();
    let model = common::trained(&ck, &cpu, &with_embeddings, 3);
    assert!(model
        .trainable_names()
        .contains(&"bert.embeddings_project.bias".to_string()));
    let dir = tempfile::tempdir().unwrap();
    export(dir.path(), &model, &with_embeddings);
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
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
        logits_of(&ck, &cpu, &back, "pairs"),
        logits_of(&ck, &cpu, &model, "pairs")
    );

    // PEFT with `modules_to_save` naming `electra.embeddings` alone keeps the projection
    // frozen: so does the import, which then keeps the tables frozen too (a plan trains both
    // or neither) and says so.
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
/// the base's tensor names, and gives PEFT's logits as a checkpoint of its own.
#[test]
fn a_merged_electra_adapter_is_an_electra_sequence_classifier() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let opened =
        spafit::adapter::open_adapter(&fixture_dir().join("peft-lora"), &ck, &cpu).unwrap();
    let kind = opened.head().default_kind();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    spafit::adapter::save_merged(
        &out,
        &cpu,
        opened.model,
        &kind,
        &ck,
        spafit::adapter::MergedDType::F64,
        None,
    )
    .unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["ElectraForSequenceClassification"])
    );
    assert_eq!(config["model_type"], "electra");
    assert_eq!(config["embedding_size"], 24);
    assert_eq!(
        sorted_names(&WeightsFile::open(&out.join("model.safetensors")).unwrap()),
        sorted_names(&ck.weights)
    );
    let merged = Checkpoint::open(&out).unwrap();
    let model = BertClassifier::from_fine_tuned(&merged, &cpu).unwrap();
    for inputs in ["singles", "pairs"] {
        let e = rel_err(
            &logits_of(&merged, &cpu, &model, inputs),
            &read(&reference(), &format!("peft.{inputs}.logits")),
        );
        println!("merged, {inputs}: logits rel err {e:.2e}");
        assert!(e <= 1e-12, "{inputs}: {e:e}");
    }
}

/// Full fine-tuning (the projection and the embeddings train) and SPAFIT on ELECTRA on the
/// CUDA backend (the CPU stand-in without a GPU), f32, with dropout on: logits, loss and every
/// trainable gradient as the f64 CPU reference gives them.
#[test]
fn electra_on_cuda_matches_the_f64_reference() {
    use spafit::backend::cuda::CudaBackend;
    use spafit::tensor::DType;
    let ck = checkpoint();
    fn run<B: Backend>(ck: &Checkpoint, backend: &B, plan: &PeftPlan) -> Vec<Vec<f64>> {
        let model = common::trained(ck, backend, plan, 3);
        let input = ModelInput::for_model(backend, &encode(ck, "pairs"), &ck.config).unwrap();
        let mut tape = Tape::new(backend.clone());
        let mut dropouts = DropoutPlan::train(0.1, 0.1, 0.1, 7);
        let logits = model.forward(&mut tape, &input, &mut dropouts).unwrap();
        let loss = model
            .loss(&mut tape, &logits, &labels(backend, "pairs"))
            .unwrap();
        let grads = tape.backward(&loss).unwrap();
        let mut out = vec![
            backend.to_f64(logits.value()).unwrap(),
            backend.to_f64(loss.value()).unwrap(),
        ];
        for name in model.trainable_names() {
            out.push(backend.to_f64(grads.get(&name).unwrap()).unwrap());
        }
        out
    }
    let cuda = CudaBackend::hardware_or_emulated(DType::F32)
        .map(CudaBackend::with_poisoned_outputs)
        .unwrap_or_else(|e| panic!("no CUDA backend, not even the CPU stand-in: {e}"));
    let mut spafit_config = PeftConfig::new(Method::Spafit).for_family(ck.config.family());
    spafit_config.n1 = spafit::peft::Boundary::Layer(1);
    spafit_config.n2 = spafit::peft::Boundary::Layer(2);
    spafit_config.lora.rank = 4;
    for config in [PeftConfig::new(Method::Full), spafit_config] {
        let plan = PeftPlan::new(&config.for_family(ck.config.family()), 3).unwrap();
        let reference = run(&ck, &CpuBackend::f64(), &plan);
        let device = run(&ck, &cuda, &plan);
        assert_eq!(reference.len(), device.len());
        let mut worst: f64 = 0.0;
        for (i, (ours, want)) in device.iter().zip(&reference).enumerate() {
            let e = rel_err(ours, want);
            // The key biases' gradients are zero up to rounding; everything else is compared.
            if want.iter().any(|v| v.abs() > 1e-9) {
                assert!(e <= 1e-4, "{}: output {i}: {e:e}", plan.method);
                worst = worst.max(e);
            }
        }
        println!(
            "{}: CUDA f32 against the f64 CPU: worst rel err {worst:.2e} over the logits, the \
             loss and {} gradients",
            plan.method,
            device.len() - 2
        );
    }
}

fn sentiment_csv(rows: &[(&str, u8)]) -> String {
    let mut s = String::from("text,label\n");
    for (t, l) in rows {
        s.push_str(&format!("\"{t}\",{l}\n"));
    }
    s
}

/// `spafit train`, `eval`, `predict`, `merge` from the discriminator checkpoint, as a user
/// starts from ELECTRA's published ones, on the CPU and on `cuda-emu`, whose logged losses
/// agree (f32, ≤ 1e-4 relative); the merge evaluates as the adapter does.
#[test]
fn electra_trains_evaluates_predicts_and_merges_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ("a gorgeous, witty, seductive movie.", 1),
        ("unbelievably dull!", 0),
        ("the rock is destined to be great", 1),
        ("what plot?", 0),
        ("a cat sat on the mat", 1),
        ("so-so", 0),
        ("how do I learn rust quickly?", 1),
        ("it's a bad sign", 0),
    ];
    std::fs::write(dir.path().join("train.csv"), sentiment_csv(&rows)).unwrap();
    std::fs::write(dir.path().join("dev.csv"), sentiment_csv(&rows[..4])).unwrap();
    let model = fixture_dir().join("discriminator").display().to_string();
    let spafit = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let losses = |out: &str| -> Vec<f64> {
        std::fs::read_to_string(dir.path().join(out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["type"] == "train" || l["type"] == "eval")
            .map(|l| l["loss"].as_f64().unwrap())
            .collect()
    };
    for device in ["cpu", "cuda-emu"] {
        spafit(&[
            "train",
            "--model",
            &model,
            "--train-file",
            "train.csv",
            "--dev-file",
            "dev.csv",
            "--method",
            "spafit",
            "--n1",
            "1",
            "--n2",
            "2",
            "--max-len",
            "16",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--log-every",
            "1",
            "--device",
            device,
            "--output",
            device,
            "--quiet",
        ]);
    }
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args([
            "train",
            "--model",
            &model,
            "--train-file",
            "train.csv",
            "--method",
            "lora",
            "--train-pooler",
            "--output",
            "pooler",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("--train-pooler")
            && stderr.contains("ELECTRA"),
        "{stderr}"
    );
    let (cpu, emu) = (losses("cpu"), losses("cuda-emu"));
    assert_eq!(cpu.len(), 6, "{cpu:?}");
    assert_eq!(cpu.len(), emu.len());
    for (a, b) in cpu.iter().zip(&emu) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{cpu:?} vs {emu:?}");
    }
    let eval = spafit(&[
        "eval",
        "--model",
        &model,
        "--adapter",
        "cpu/best",
        "--dev-file",
        "dev.csv",
    ]);
    assert!(eval.contains("accuracy"), "{eval}");
    let predicted = spafit(&[
        "predict",
        "--model",
        &model,
        "--adapter",
        "cpu/best",
        "--dev-file",
        "dev.csv",
    ]);
    assert_eq!(predicted.lines().count(), 4, "{predicted}");
    spafit(&[
        "merge",
        "--model",
        &model,
        "--adapter",
        "cpu/best",
        "--output",
        "merged",
        "--dtype",
        "f64",
    ]);
    let merged_eval = spafit(&["eval", "--model", "merged", "--dev-file", "dev.csv"]);
    let loss_of = |text: &str| -> f64 {
        let line: Value = serde_json::from_str(text.lines().last().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        line["loss"].as_f64().unwrap()
    };
    let (a, b) = (loss_of(&eval), loss_of(&merged_eval));
    assert!((a - b).abs() <= 1e-6 * a.abs(), "adapter {a} vs merged {b}");
}

/// `embedding_size` absent is transformers' 128 (a projection under a hidden size of 64);
/// equal to the hidden size (ELECTRA-base's and -large's), no projection: the tables are
/// hidden-wide and a stored projection is not asked for. Null, or a width the tables do not
/// have, is refused naming the setting.
#[test]
fn embedding_size_defaults_and_equal_widths_as_in_transformers() {
    let text = std::fs::read_to_string(fixture_dir().join("model/config.json")).unwrap();
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
    let narrower = copy_model(tmp.path(), |name| name != "config.json");
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
    let mut config = checkpoint().config.clone();
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
    let ck = checkpoint();
    let plan = lora_plan();
    fn run<B: Backend>(ck: &Checkpoint, backend: &B, plan: &PeftPlan) -> Vec<f64> {
        let mut model = common::trained(ck, backend, plan, 3);
        model.store_frozen_weights(backend).unwrap();
        let project = &model.bert.embeddings.project.as_ref().unwrap().weight;
        assert!(!project.trainable);
        let input = ModelInput::for_model(backend, &encode(ck, "pairs"), &ck.config).unwrap();
        let mut tape = Tape::inference(backend.clone());
        let logits = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        let loss = model
            .loss(&mut tape, &logits, &labels(backend, "pairs"))
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
