//! Parity with Hugging Face transformers + PEFT (float64) on the real all-MiniLM-L6-v2
//! checkpoint. Every setting comes from the fixture's `fixture.json`, so any fixture in the
//! same format (`SPAFIT_FIXTURE_DIR`) is checked the same way. The checkpoint comes from
//! `scripts/fetch_assets.sh` (or `SPAFIT_MODEL_DIR`); without it these tests FAIL.

use crate::common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{rel_err, u32_matrix};
use serde_json::Value;
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{Checkpoint, WeightsFile};
use spafit::model::{BertClassifier, BertModel, Labels, ModelInput};
use spafit::nn::{DropoutPlan, LoraConfig, LoraTarget};
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};
use spafit::tensor::Shape;
use spafit::text::EncodedBatch;

fn fixture_dir() -> PathBuf {
    std::env::var_os("SPAFIT_FIXTURE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm-l6"),
        PathBuf::from,
    )
}

fn checkpoint() -> &'static Checkpoint {
    static CHECKPOINT: OnceLock<Checkpoint> = OnceLock::new();
    CHECKPOINT.get_or_init(|| {
        let dir = std::env::var_os("SPAFIT_MODEL_DIR").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2"),
            PathBuf::from,
        );
        Checkpoint::open(&dir).unwrap_or_else(|e| {
            panic!("the all-MiniLM-L6-v2 checkpoint is required: {e}\nrun scripts/fetch_assets.sh first")
        })
    })
}

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = fixture_dir().join("fixture.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    })
}

fn fixture_file(name: &str) -> WeightsFile {
    WeightsFile::open(&fixture_dir().join(name)).unwrap()
}

/// A fixture tensor as f64 with its shape.
fn read(file: &WeightsFile, name: &str) -> (Vec<usize>, Vec<f64>) {
    let shape = file
        .shape(name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"));
    let values = file.read_f64(name, &Shape::new(shape.clone())).unwrap();
    (shape, values)
}

fn texts(key: &str) -> Vec<Vec<String>> {
    common::text_rows(&fixture()["inputs"][key])
}

fn encode(inputs: &str) -> EncodedBatch {
    let max_len = fixture()["inputs"]["max_len"].as_u64().unwrap() as usize;
    let tok = checkpoint().tokenizer(max_len).unwrap();
    let rows = texts(inputs);
    tok.encode_batch(&common::text_inputs(&rows)).unwrap()
}

#[test]
fn token_ids_types_and_masks_match_exactly() {
    for (inputs, tokens) in [("singles", "tokens_singles"), ("pairs", "tokens_pairs")] {
        let ours = encode(inputs);
        let theirs = &fixture()["inputs"][tokens];
        assert_eq!(
            ours.input_ids,
            u32_matrix(&theirs["input_ids"]),
            "{inputs}: input_ids"
        );
        assert_eq!(
            ours.token_type_ids,
            u32_matrix(&theirs["token_type_ids"]),
            "{inputs}: token_type_ids"
        );
        assert_eq!(
            ours.attention_mask,
            u32_matrix(&theirs["attention_mask"]),
            "{inputs}: attention_mask"
        );
    }
}

fn encoder_check<B: Backend>(backend: B, tol: f64) {
    let ck = checkpoint();
    let mut source = |name: &str, shape: Shape| ck.tensor(&backend, name, shape);
    let model = BertModel::load(&ck.config, &mut source).unwrap();
    let reference = fixture_file("encoder.safetensors");
    for inputs in ["singles", "pairs"] {
        let enc = encode(inputs);
        let input = ModelInput::new(&backend, &enc).unwrap();
        let mut tape = Tape::new(backend.clone());
        let out = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        let hidden = backend.to_f64(out.last_hidden_state.value()).unwrap();
        let pooled = backend.to_f64(out.pooler_output.value()).unwrap();
        let h = ck.config.hidden_size;
        let mut mean = vec![0.0; enc.batch * h];
        for b in 0..enc.batch {
            let n: u32 = enc.row(&enc.attention_mask, b).iter().sum();
            for t in 0..enc.seq {
                if enc.attention_mask[b * enc.seq + t] == 1 {
                    for j in 0..h {
                        mean[b * h + j] += hidden[(b * enc.seq + t) * h + j] / f64::from(n);
                    }
                }
            }
        }
        for (name, ours) in [
            ("last_hidden_state", &hidden),
            ("pooler_output", &pooled),
            ("mean_pooled", &mean),
        ] {
            let (_, theirs) = read(&reference, &format!("{inputs}.{name}"));
            let e = rel_err(ours, &theirs);
            println!("PARITY {} {inputs}.{name}: rel err {e:.3e}", backend.name());
            assert!(
                e <= tol,
                "{inputs}.{name}: relative error {e:e} > {tol:e} on {}",
                backend.name()
            );
        }
        assert_eq!(tape.stats().nodes, 0, "a frozen model must record nothing");
    }
}

#[test]
fn encoder_outputs_match_in_f64() {
    encoder_check(CpuBackend::f64(), 1e-9);
}

#[test]
fn encoder_outputs_match_in_f32() {
    encoder_check(CpuBackend::f32(), 1e-4);
}

/// The PEFT configuration a fixture case describes.
fn case_config(case: &Value) -> PeftConfig {
    let method: Method = case["method"].as_str().unwrap().parse().unwrap();
    let mut config = PeftConfig::new(method);
    if let Some(r) = case.get("lora_r") {
        let targets: Vec<LoraTarget> = case["lora_targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().parse().unwrap())
            .collect();
        config.lora = LoraConfig {
            rank: r.as_u64().unwrap() as usize,
            alpha: case["lora_alpha"].as_f64().unwrap(),
            dropout: 0.0,
            targets,
            overrides: Vec::new(),
            unadapted: Vec::new(),
            dora: false,
        };
        // SPAFIT places its adapters from N2 up itself (and refuses a list); the fixture's
        // list is checked against its plan in `build_case`.
        if method == Method::Lora {
            let layers: Vec<usize> = case["lora_layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_u64().unwrap() as usize)
                .collect();
            config.lora_layers = Some(layers);
        }
    }
    if let (Some(n1), Some(n2)) = (case.get("n1"), case.get("n2")) {
        config.n1 = Boundary::Layer(n1.as_u64().unwrap() as usize);
        config.n2 = Boundary::Layer(n2.as_u64().unwrap() as usize);
    }
    config
}

fn build_case<B: Backend>(
    backend: &B,
    case: &Value,
    file: &WeightsFile,
) -> (BertClassifier<B>, ModelInput<B>, Labels<B>) {
    let ck = checkpoint();
    let num_labels = case["num_labels"].as_u64().unwrap() as usize;
    let mut model = BertClassifier::from_checkpoint(ck, backend, num_labels, 0).unwrap();
    let plan = PeftPlan::new(&case_config(case), ck.config.num_hidden_layers).unwrap();
    if let Some(lora_layers) = case.get("lora_layers") {
        // The fixture's own statement of where adapters go must be the plan's.
        let listed: Vec<usize> = lora_layers
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_u64().unwrap() as usize)
            .collect();
        let planned: Vec<usize> = (0..plan.strata.len())
            .filter(|&l| plan.strata[l].has_lora())
            .collect();
        assert_eq!(listed, planned);
    }
    let mut init = |name: &str, shape: Shape| file.tensor(backend, &format!("init.{name}"), shape);
    model.apply_plan(&plan, &mut init).unwrap();
    model.store_frozen_weights(backend).unwrap();
    for p in model.classifier.params_mut() {
        p.value = file
            .tensor(
                backend,
                &format!("init.{}", p.name),
                p.value.shape().clone(),
            )
            .unwrap();
    }
    let enc = encode(case["inputs"].as_str().unwrap());
    let input = ModelInput::new(backend, &enc).unwrap();
    let labels = &case["labels"];
    let n = enc.batch;
    let labels = if num_labels == 1 {
        let y: Vec<f64> = labels
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        Labels::Scores(backend.tensor_from_f64(Shape::new([n]), &y).unwrap())
    } else {
        let y: Vec<u32> = labels
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        Labels::Classes(backend.tensor_from_u32(Shape::new([n]), &y).unwrap())
    };
    (model, input, labels)
}

fn method_parity(method: &str) {
    let cases: Vec<&Value> = fixture()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["method"] == method)
        .collect();
    assert!(!cases.is_empty(), "the fixture has no {method} case");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let file = fixture_file(&format!("{name}.safetensors"));
        let (_, want_logits) = read(&file, "logits");
        let (_, want_loss) = read(&file, "loss");

        // f64: values, loss and every trainable gradient.
        let cpu = CpuBackend::f64();
        let (model, input, labels) = build_case(&cpu, case, &file);
        let want_names: Vec<String> = case["trainable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            model.trainable_names(),
            want_names,
            "{name}: trainable tensors"
        );
        assert_eq!(
            model.trainable_parameter_count() as u64,
            case["n_trainable_params"].as_u64().unwrap(),
            "{name}: count"
        );
        let mut tape = Tape::new(cpu);
        let logits = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        let loss = model.loss(&mut tape, &logits, &labels).unwrap();
        let e_logits = rel_err(&cpu.to_f64(logits.value()).unwrap(), &want_logits);
        let e_loss = rel_err(&cpu.to_f64(loss.value()).unwrap(), &want_loss);
        assert!(e_logits <= 1e-9, "{name}: logits {e_logits:e}");
        assert!(e_loss <= 1e-9, "{name}: loss {e_loss:e}");
        let grads = tape.backward(&loss).unwrap();
        let mut worst: f64 = 0.0;
        let mut checked = 0;
        for grad_name in file.names().iter().filter_map(|n| n.strip_prefix("grad.")) {
            let (_, want) = read(&file, &format!("grad.{grad_name}"));
            let ours = cpu
                .to_f64(
                    grads
                        .get(grad_name)
                        .unwrap_or_else(|| panic!("{name}: no gradient for {grad_name}")),
                )
                .unwrap();
            if grad_name.ends_with("attention.self.key.bias") {
                // Exactly zero in exact arithmetic (softmax ignores a per-query shift); the
                // reference holds rounding noise, so compare absolutely.
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(
                    ours.iter().all(|v| v.abs() < 1e-12) && scale < 1e-12,
                    "{name}: {grad_name}"
                );
                continue;
            }
            let e = rel_err(&ours, &want);
            assert!(
                e <= 1e-7,
                "{name}: gradient of {grad_name}: relative error {e:e}"
            );
            worst = worst.max(e);
            checked += 1;
        }
        assert!(checked > 0, "{name}: the fixture holds no gradient");
        if method != "full" {
            // The reference holds every trainable gradient; ours must not hold more.
            assert_eq!(grads.len(), want_names.len(), "{name}: gradient buffers");
        }
        println!("PARITY {name} f64: logits {e_logits:.2e}, loss {e_loss:.2e}, {checked} gradients worst {worst:.2e}");

        // f32: values and loss.
        let c32 = CpuBackend::f32();
        let (model, input, labels) = build_case(&c32, case, &file);
        let mut tape = Tape::new(c32);
        let logits = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        let loss = model.loss(&mut tape, &logits, &labels).unwrap();
        let e32_logits = rel_err(&c32.to_f64(logits.value()).unwrap(), &want_logits);
        let e32_loss = rel_err(&c32.to_f64(loss.value()).unwrap(), &want_loss);
        assert!(
            e32_logits <= 1e-4 && e32_loss <= 1e-4,
            "{name} f32: logits {e32_logits:e}, loss {e32_loss:e}"
        );
        println!("PARITY {name} f32: logits {e32_logits:.2e}, loss {e32_loss:.2e}");
    }
}

#[test]
fn full_fine_tuning_matches_transformers() {
    method_parity("full");
}

#[test]
fn bitfit_matches_transformers() {
    method_parity("bitfit");
}

#[test]
fn lora_matches_peft() {
    method_parity("lora");
}

#[test]
fn spafit_matches_peft() {
    method_parity("spafit");
}

/// SPAFIT on the CUDA backend (a GPU, else the CPU stand-in) against the transformers + PEFT
/// float64 oracle: logits, loss and every trainable gradient, classification and regression;
/// f32 ≤ 1e-4, bf16 (mixed precision, frozen weights stored in bf16) ≤ 2e-2.
#[test]
fn spafit_matches_peft_on_cuda() {
    use spafit::backend::cuda::CudaBackend;
    use spafit::tensor::DType;
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 2e-2)] {
        let b = CudaBackend::hardware_or_emulated(dtype).expect("a CUDA backend");
        for case in fixture()["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["method"] == "spafit")
        {
            let name = case["name"].as_str().unwrap();
            let file = fixture_file(&format!("{name}.safetensors"));
            let (_, want_logits) = read(&file, "logits");
            let (_, want_loss) = read(&file, "loss");
            let (model, input, labels) = build_case(&b, case, &file);
            let mut tape = Tape::new(b.clone());
            let logits = model
                .forward(&mut tape, &input, &mut DropoutPlan::eval())
                .unwrap();
            let loss = model.loss(&mut tape, &logits, &labels).unwrap();
            let e_logits = rel_err(&b.to_f64(logits.value()).unwrap(), &want_logits);
            let e_loss = rel_err(&b.to_f64(loss.value()).unwrap(), &want_loss);
            let grads = tape.backward(&loss).unwrap();
            let mut worst = (0.0f64, String::new());
            for grad_name in file.names().iter().filter_map(|n| n.strip_prefix("grad.")) {
                if grad_name.ends_with("attention.self.key.bias") {
                    continue; // zero in exact arithmetic; checked in f64 above
                }
                let (_, want) = read(&file, &format!("grad.{grad_name}"));
                let ours = b.to_f64(grads.get(grad_name).unwrap()).unwrap();
                let e = rel_err(&ours, &want);
                if e >= worst.0 {
                    worst = (e, grad_name.to_string());
                }
            }
            println!(
                "PARITY {name} {}: logits {e_logits:.2e}, loss {e_loss:.2e}, worst gradient {:.2e} ({})",
                spafit::backend::Backend::name(&b),
                worst.0,
                worst.1
            );
            assert!(
                e_logits <= tol && e_loss <= tol,
                "{name}: logits {e_logits:e}, loss {e_loss:e}"
            );
            assert!(
                worst.0 <= tol,
                "{name}: gradient of {}: {:e}",
                worst.1,
                worst.0
            );
        }
    }
}

#[test]
fn spafit_keeps_less_than_lora_and_full_on_the_real_model() {
    let cpu = CpuBackend::f64();
    let ck = checkpoint();
    let enc = encode("singles");
    let input = ModelInput::new(&cpu, &enc).unwrap();
    let labels = Labels::Classes(
        cpu.tensor_from_u32(Shape::new([enc.batch]), &vec![1; enc.batch])
            .unwrap(),
    );
    let layers = ck.config.num_hidden_layers;
    let mut spafit = PeftConfig::new(Method::Spafit);
    spafit.n1 = Boundary::Layer(2);
    spafit.n2 = Boundary::Layer(4);
    let mut results = Vec::new();
    for (label, config) in [
        ("spafit", spafit),
        ("lora", PeftConfig::new(Method::Lora)),
        ("full", PeftConfig::new(Method::Full)),
    ] {
        let mut model = BertClassifier::from_checkpoint(ck, &cpu, 2, 0).unwrap();
        let plan = PeftPlan::new(&config, layers).unwrap();
        model
            .apply_plan(&plan, &mut spafit::peft::peft_lora_init(&cpu, 1))
            .unwrap();
        let mut tape = Tape::new(cpu);
        let logits = model
            .forward(&mut tape, &input, &mut DropoutPlan::train(0.1, 0.1, 0.1, 3))
            .unwrap();
        let loss = model.loss(&mut tape, &logits, &labels).unwrap();
        let stats = tape.stats().clone();
        tape.backward(&loss).unwrap();
        let stats_after = tape.stats().clone();
        println!(
            "MEMORY {label}: nodes {}, saved activation bytes {}, grad buffers {} ({} bytes), trainable params {}",
            stats.nodes,
            stats.saved_activation_bytes,
            stats_after.grad_buffers,
            stats_after.grad_bytes,
            model.trainable_parameter_count()
        );
        if label == "spafit" {
            for scope in ["embeddings", "layer.0", "layer.1"] {
                assert_eq!(
                    stats.scope(scope).nodes,
                    0,
                    "SPAFIT's frozen stratum recorded nodes in {scope}"
                );
                assert_eq!(stats.scope(scope).saved_activation_bytes, 0);
            }
        }
        results.push(stats_after);
    }
    let (s, l, f) = (&results[0], &results[1], &results[2]);
    assert!(
        s.saved_activation_bytes < l.saved_activation_bytes,
        "SPAFIT {} vs LoRA {}",
        s.saved_activation_bytes,
        l.saved_activation_bytes
    );
    assert!(
        l.saved_activation_bytes < f.saved_activation_bytes,
        "LoRA {} vs full {}",
        l.saved_activation_bytes,
        f.saved_activation_bytes
    );
    assert!(s.grad_bytes < f.grad_bytes);
}

/// The classifier runs its last layer on the `[CLS]` rows alone; the full last layer, with
/// the same head, is the oracle: the same logits, loss and trainable gradients to f64
/// rounding, from a tape that keeps less.
#[test]
fn the_classifier_last_layer_on_cls_rows_matches_the_full_layer() {
    let case = fixture()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "spafit")
        .expect("a spafit case");
    let file = fixture_file(&format!("{}.safetensors", case["name"].as_str().unwrap()));
    let cpu = CpuBackend::f64();
    let (model, input, labels) = build_case(&cpu, case, &file);

    let mut trimmed = Tape::new(cpu);
    let logits = model
        .forward(&mut trimmed, &input, &mut DropoutPlan::eval())
        .unwrap();
    let loss = model.loss(&mut trimmed, &logits, &labels).unwrap();
    let trimmed_saved = trimmed.stats().saved_activation_bytes;
    let trimmed_logits = cpu.to_f64(logits.value()).unwrap();
    let trimmed_loss = cpu.to_f64(loss.value()).unwrap();
    let trimmed_grads = trimmed.backward(&loss).unwrap();

    let mut full = Tape::new(cpu);
    let mut dropouts = DropoutPlan::eval();
    let out = model
        .bert
        .forward(&mut full, &input, &mut dropouts)
        .unwrap();
    let logits = model
        .classifier
        .forward(&mut full, &out.pooler_output, &mut dropouts)
        .unwrap();
    let loss = model.loss(&mut full, &logits, &labels).unwrap();
    let full_saved = full.stats().saved_activation_bytes;
    let e_logits = rel_err(&trimmed_logits, &cpu.to_f64(logits.value()).unwrap());
    let e_loss = rel_err(&trimmed_loss, &cpu.to_f64(loss.value()).unwrap());
    assert!(e_logits <= 1e-12, "logits {e_logits:e}");
    assert!(e_loss <= 1e-12, "loss {e_loss:e}");
    let full_grads = full.backward(&loss).unwrap();
    assert_eq!(trimmed_grads.len(), full_grads.len());
    let mut worst: f64 = 0.0;
    for name in model.trainable_names() {
        let want = cpu.to_f64(full_grads.get(&name).unwrap()).unwrap();
        let ours = cpu.to_f64(trimmed_grads.get(&name).unwrap()).unwrap();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = ours
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        // Relative to the tensor's largest entry: the key biases' gradients are zero up to
        // rounding on both sides.
        let e = diff / scale.max(1e-300);
        assert!(scale < 1e-12 || e <= 1e-10, "gradient of {name}: {e:e}");
        worst = worst.max(if scale < 1e-12 { 0.0 } else { e });
    }
    assert!(
        trimmed_saved < full_saved,
        "saved activations: [CLS] rows {trimmed_saved} vs full {full_saved}"
    );
    println!(
        "CLS-ROWS logits {e_logits:.2e}, loss {e_loss:.2e}, {} gradients worst {worst:.2e}, saved activation bytes {trimmed_saved} vs {full_saved}",
        trimmed_grads.len()
    );
}

/// Texts held in memory through `predict_texts` / `predict_text_pairs` (the checkpoint's
/// tokenizer, length-sorted batches of two, so rows come back reordered) answer with the
/// softmax of transformers' logits for the same texts and weights, or its score.
#[test]
fn predictions_for_texts_in_memory_match_transformers() {
    use spafit::train::{predict_text_pairs, predict_texts, Prediction};
    let cpu = CpuBackend::f64();
    let max_len = fixture()["inputs"]["max_len"].as_u64().unwrap() as usize;
    let tokenizer = checkpoint().tokenizer(max_len).unwrap();
    for case in fixture()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let file = fixture_file(&format!("{name}.safetensors"));
        let (_, want_logits) = read(&file, "logits");
        let (model, _, _) = build_case(&cpu, case, &file);
        let rows = texts(case["inputs"].as_str().unwrap());
        let got = match rows[0].len() {
            1 => {
                let singles: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
                predict_texts(&cpu, &model, &tokenizer, &singles, 2).unwrap()
            }
            _ => {
                let pairs: Vec<(&str, &str)> = rows
                    .iter()
                    .map(|r| (r[0].as_str(), r[1].as_str()))
                    .collect();
                predict_text_pairs(&cpu, &model, &tokenizer, &pairs, 2).unwrap()
            }
        };
        let k = model.num_labels();
        assert_eq!(got.len() * k, want_logits.len(), "{name}");
        for (i, (p, want)) in got.iter().zip(want_logits.chunks(k)).enumerate() {
            match p {
                Prediction::Score(s) => {
                    assert_eq!(k, 1, "{name}");
                    assert!(
                        (s - want[0]).abs() <= 1e-9,
                        "{name} row {i}: {s} vs {want:?}"
                    );
                }
                Prediction::Class {
                    class,
                    probabilities,
                    probability,
                } => {
                    let top = want.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = want.iter().map(|v| (v - top).exp()).sum();
                    for (c, (g, w)) in probabilities.iter().zip(want).enumerate() {
                        let w = (w - top).exp() / z;
                        assert!(
                            (g - w).abs() <= 1e-9,
                            "{name} row {i} class {c}: {g} vs {w}"
                        );
                    }
                    assert_eq!(want[*class], top, "{name} row {i}");
                    assert_eq!(*probability, probabilities[*class]);
                }
                Prediction::LabelSet { .. } => panic!("{name}: no fixture head is multi-label"),
            }
        }
    }
    // No texts, no answers (and no batch to run).
    let case = &fixture()["cases"][0];
    let file = fixture_file(&format!("{}.safetensors", case["name"].as_str().unwrap()));
    let (model, _, _) = build_case(&cpu, case, &file);
    assert!(predict_texts::<_, &str>(&cpu, &model, &tokenizer, &[], 2)
        .unwrap()
        .is_empty());
}
