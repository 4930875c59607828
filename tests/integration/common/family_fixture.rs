//! A tiny random checkpoint of one encoder family beside what transformers + PEFT computed on
//! it in float64 (`tests/fixtures/tiny-{roberta,electra,distilbert}`, each written by its
//! `make_fixture.py` in one layout: `model/`, `peft-lora/`, `expected.json`,
//! `expected.safetensors`), and the checks every family's test runs on its fixture the same
//! way: tokens, logits, loss and every gradient; PEFT's adapter; spafit's export beside
//! PEFT's; merges; the CUDA backend; the command line.

use std::path::{Path, PathBuf};

use serde_json::Value;
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{Checkpoint, EncoderFamily, WeightsFile};
use spafit::model::{BertClassifier, Labels, ModelInput};
use spafit::nn::{DropoutPlan, Param};
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};
use spafit::tensor::Shape;
use spafit::text::EncodedBatch;

use super::{rel_err, u32_matrix};

/// One family's fixture folder.
pub struct FamilyFixture {
    dir: PathBuf,
    /// The family its checkpoints are of.
    pub family: EncoderFamily,
}

impl FamilyFixture {
    /// `tests/fixtures/{name}`, or where the variable `env` says (the GPU check runs the test
    /// binaries on another machine, from another folder).
    pub fn new(name: &str, env: &str, family: EncoderFamily) -> Self {
        let dir = std::env::var_os(env).map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures")
                    .join(name)
            },
            PathBuf::from,
        );
        FamilyFixture { dir, family }
    }

    /// The fixture's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint in subfolder `folder` (`model`: the fine-tuned sequence classifier).
    pub fn checkpoint(&self, folder: &str) -> Checkpoint {
        let ck = Checkpoint::open(self.dir.join(folder)).unwrap();
        assert_eq!(ck.config.family(), self.family);
        ck
    }

    /// `expected.json`.
    pub fn expected(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// `expected.safetensors`.
    pub fn reference(&self) -> WeightsFile {
        WeightsFile::open(&self.dir.join("expected.safetensors")).unwrap()
    }

    /// The fixture's `singles` or `pairs`, tokenized by spafit.
    pub fn encode(&self, ck: &Checkpoint, inputs: &str) -> EncodedBatch {
        let e = self.expected();
        let max_len = e["inputs"]["max_len"].as_u64().unwrap() as usize;
        let rows = super::text_rows(&e["inputs"][inputs]);
        let batch = super::text_inputs(&rows);
        ck.tokenizer(max_len).unwrap().encode_batch(&batch).unwrap()
    }

    /// The labels of `singles` or `pairs`: class ids, or one 0/1 per class (multi-label).
    pub fn labels<B: Backend>(&self, backend: &B, inputs: &str) -> Labels<B> {
        let given = self.expected()["inputs"]["labels"][inputs].clone();
        if let Some(rows) = given.as_array().filter(|r| r.iter().all(Value::is_array)) {
            let multi_hot: Vec<f64> = rows
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect();
            let shape = Shape::new([rows.len(), multi_hot.len() / rows.len()]);
            return Labels::MultiHot(backend.tensor_from_f64(shape, &multi_hot).unwrap());
        }
        let y = u32_matrix(&Value::Array(vec![given]));
        Labels::Classes(backend.tensor_from_u32(Shape::new([y.len()]), &y).unwrap())
    }

    /// The outputs of the fixture's classifier.
    pub fn classes(&self) -> usize {
        self.checkpoint("model").classifier_outputs().unwrap()
    }

    /// `model`'s logits on `singles` or `pairs`, in eval mode.
    pub fn logits_of<B: Backend>(
        &self,
        ck: &Checkpoint,
        backend: &B,
        model: &BertClassifier<B>,
        inputs: &str,
    ) -> Vec<f64> {
        let input = ModelInput::for_model(backend, &self.encode(ck, inputs), &ck.config).unwrap();
        let mut tape = Tape::inference(backend.clone());
        let out = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        backend.to_f64(out.value()).unwrap()
    }

    /// The fixture's `model/` folder copied to `to`, the files `keep` keeps.
    pub fn copy_model(&self, to: &Path, keep: impl Fn(&str) -> bool) {
        copy_folder(&self.dir.join("model"), to, keep);
    }

    /// spafit's ids and attention mask of the fixture's texts and pairs as transformers'
    /// tokenizer gave them, and its segment ids too, or zeros where that tokenizer returned
    /// none.
    pub fn check_tokens(&self, ck: &Checkpoint) {
        for inputs in ["singles", "pairs"] {
            let ours = self.encode(ck, inputs);
            let theirs = &self.expected()["inputs"][format!("tokens_{inputs}")];
            let at = ck.dir().display();
            assert_eq!(
                ours.input_ids,
                u32_matrix(&theirs["input_ids"]),
                "{at}: {inputs}"
            );
            assert_eq!(
                ours.attention_mask,
                u32_matrix(&theirs["attention_mask"]),
                "{at}: {inputs}"
            );
            match theirs.get("token_type_ids") {
                Some(types) => assert_eq!(ours.token_type_ids, u32_matrix(types), "{at}"),
                None => assert!(ours.token_type_ids.iter().all(|&t| t == 0), "{at}"),
            }
        }
    }

    /// Full fine-tuning in f64 without dropout: logits and loss (≤ 1e-12) and the gradient of
    /// every parameter (≤ 1e-9), looked up under transformers' names, for single texts and for
    /// pairs; as many gradients as transformers differentiates. Returns each input set's
    /// gradient names and values, by spafit's names.
    pub fn check_every_gradient(&self, ck: &Checkpoint) -> Vec<(String, Vec<f64>)> {
        let cpu = CpuBackend::f64();
        let reference = self.reference();
        let layers = ck.config.num_hidden_layers;
        let mut all = Vec::new();
        for inputs in ["singles", "pairs"] {
            let mut model = BertClassifier::from_checkpoint(ck, &cpu, self.classes(), 0).unwrap();
            let plan = PeftPlan::new(&PeftConfig::new(Method::Full), layers).unwrap();
            model.apply_plan(&plan, &mut |_, s| cpu.zeros(s)).unwrap();
            let input = ModelInput::for_model(&cpu, &self.encode(ck, inputs), &ck.config).unwrap();
            let mut tape = Tape::new(cpu);
            let logits = model
                .forward(&mut tape, &input, &mut DropoutPlan::eval())
                .unwrap();
            let loss = model
                .loss(&mut tape, &logits, &self.labels(&cpu, inputs))
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
            let mut worst: (f64, String) = (0.0, String::new());
            let mut checked = 0;
            for p in model.params() {
                let theirs = format!("{inputs}.grad.{}", self.family.hf_name(&p.name));
                let want = read(&reference, &theirs);
                let ours = cpu
                    .to_f64(
                        grads
                            .get(&p.name)
                            .unwrap_or_else(|| panic!("no gradient for {}", p.name)),
                    )
                    .unwrap();
                // A key bias's gradient is zero (softmax ignores a shift shared by a row's
                // scores): both sides hold rounding noise only. Not DeBERTa's, whose
                // position-to-content term reads the keys against each distance's row.
                let noise_only = want.iter().all(|v| v.abs() < 1e-12);
                let e = if p.name.ends_with("attention.self.key.bias") && noise_only {
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
                all.push((p.name.clone(), ours));
            }
            println!(
                "{inputs}: worst gradient rel err {:.2e} ({})",
                worst.0, worst.1
            );
            // Every parameter transformers differentiates, none left out.
            let theirs = reference
                .names()
                .iter()
                .filter(|n| n.starts_with(&format!("{inputs}.grad.")))
                .count();
            assert_eq!(checked, theirs, "{inputs}: gradients compared");
        }
        all
    }

    /// The LoRA adapter PEFT's own `save_pretrained` wrote (`peft-lora/`) gives PEFT's logits
    /// on `ck` (≤ 1e-12).
    pub fn check_peft_adapter(&self, ck: &Checkpoint) {
        self.check_adapter_logits(ck, "peft-lora", &self.reference(), "peft.");
    }

    /// `peft-lora-base-head/`, a LoRA adapter PEFT saved without `modules_to_save`, gives
    /// PEFT's logits on `ck`'s own head.
    pub fn check_base_head_adapter(&self, ck: &Checkpoint) {
        self.check_base_head_adapter_in(ck, "peft-lora-base-head", &["weight", "bias"]);
    }

    /// The adapter in `folder`, which saved of the classifier all but its `supplied` parts
    /// (`weight`, `bias`), gives PEFT's logits on `ck`'s own head, and says which parts the
    /// base supplies.
    pub fn check_base_head_adapter_in(&self, ck: &Checkpoint, folder: &str, supplied: &[&str]) {
        let reference =
            WeightsFile::open(&self.dir.join(folder).join("logits.safetensors")).unwrap();
        let import = self.check_adapter_logits(ck, folder, &reference, "");
        let family = ck.config.family();
        let named = |part: &&str| family.hf_name(&format!("classifier.{part}"));
        let note = import
            .notes
            .iter()
            .find(|n| n.contains("the base's own head supplies"))
            .unwrap_or_else(|| panic!("{folder}: {:?}", import.notes));
        assert!(
            supplied.iter().all(|p| note.contains(&named(p)))
                && ["weight", "bias"]
                    .iter()
                    .filter(|p| !supplied.contains(p))
                    .all(|p| !note.contains(&named(p))),
            "{folder}: {note}"
        );
    }

    /// The same adapter on `ck`, a checkpoint without a sequence classifier's head, is refused:
    /// there is no head to run it on.
    pub fn check_base_head_adapter_refused(&self, ck: &Checkpoint) {
        let adapter = self.dir.join("peft-lora-base-head");
        let e = match spafit::adapter::import_peft(&adapter, ck, &CpuBackend::f64()) {
            Ok(_) => panic!("an adapter without a head loaded on a base without one"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("no sequence classifier's head of its own") && e.contains("classifier"),
            "{e}"
        );
    }

    fn check_adapter_logits(
        &self,
        ck: &Checkpoint,
        adapter: &str,
        reference: &WeightsFile,
        prefix: &str,
    ) -> spafit::adapter::PeftImport {
        let cpu = CpuBackend::f64();
        let (model, import) =
            spafit::adapter::import_peft(&self.dir.join(adapter), ck, &cpu).unwrap();
        for inputs in ["singles", "pairs"] {
            let e = rel_err(
                &self.logits_of(ck, &cpu, &model, inputs),
                &read(reference, &format!("{prefix}{inputs}.logits")),
            );
            println!(
                "{adapter} on {}, {inputs}: logits rel err {e:.2e}",
                ck.dir().display()
            );
            assert!(e <= 1e-12, "{inputs}: {e:e}");
        }
        import
    }

    /// A LoRA plan like the PEFT fixture's (r 4, alpha 8, query and value of layers 1 and 2).
    pub fn lora_plan(&self) -> PeftPlan {
        let mut config = PeftConfig::new(Method::Lora).for_family(self.family);
        config.lora.rank = 4;
        config.lora.alpha = 8.0;
        config.lora_layers = Some(vec![1, 2]);
        PeftPlan::new(&config, 3).unwrap()
    }

    /// `model`, trained under `plan` on the fixture's `model/`, exported in PEFT's format
    /// into `dir`; its `adapter_config.json`.
    pub fn export(&self, dir: &Path, model: &BertClassifier<CpuBackend>, plan: &PeftPlan) -> Value {
        let ck = self.checkpoint("model");
        spafit::adapter::export_peft(
            dir,
            &CpuBackend::f64(),
            model,
            plan,
            &spafit::adapter::PeftExportRecord {
                base_model_name_or_path: "tiny",
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
        let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// spafit's export of the fixture's LoRA plan holds exactly the tensors PEFT's own
    /// `save_pretrained` wrote for the same adapter, each in PEFT's shape and with the model's
    /// value under the family's name, its `modules_to_save` is `["classifier"]`, its
    /// `target_modules` a pattern over the family's layers, and it imports back to the same
    /// logits bit for bit.
    pub fn check_export_beside_peft(&self) {
        let ck = self.checkpoint("model");
        let cpu = CpuBackend::f64();
        let plan = self.lora_plan();
        let model = super::trained(&ck, &cpu, &plan, self.classes());
        let dir = tempfile::tempdir().unwrap();
        let config = self.export(dir.path(), &model, &plan);
        let ours = WeightsFile::open(&dir.path().join("adapter_model.safetensors")).unwrap();
        let peft =
            WeightsFile::open(&self.dir.join("peft-lora/adapter_model.safetensors")).unwrap();
        let names = sorted_names(&ours);
        assert_eq!(names, sorted_names(&peft));
        for name in &names {
            assert_eq!(ours.shape(name), peft.shape(name), "{name}");
        }
        for p in model.params().into_iter().filter(|p| p.trainable) {
            let theirs = format!("base_model.model.{}", self.family.hf_name(&p.name));
            let shape = Shape::new(ours.shape(&theirs).unwrap());
            assert_eq!(
                ours.read_f64(&theirs, &shape).unwrap(),
                cpu.to_f64(&p.value).unwrap(),
                "{theirs}"
            );
        }
        assert_eq!(config["modules_to_save"], serde_json::json!(["classifier"]));
        let layers = self
            .family
            .hf_name("bert.encoder.layer")
            .replace('.', "\\.");
        let pattern = config["target_modules"].as_str().unwrap();
        assert!(pattern.starts_with(&layers), "{pattern}");
        let (back, _) = spafit::adapter::import_peft(dir.path(), &ck, &cpu).unwrap();
        for inputs in ["singles", "pairs"] {
            assert_eq!(
                self.logits_of(&ck, &cpu, &back, inputs),
                self.logits_of(&ck, &cpu, &model, inputs),
                "{inputs}"
            );
        }

        // Adapters of their own rank and alpha export as `rank_pattern` / `alpha_pattern`
        // keys in the family's own module names (PEFT matches them against those), and
        // import back to the same plan and logits.
        let mut plan = self.lora_plan();
        if let Some(lora) = plan.lora.as_mut() {
            lora.overrides = vec![spafit::nn::LoraOverride {
                layer: 2,
                target: spafit::nn::LoraTarget::Value,
                rank: 2,
                alpha: 3.0,
            }];
        }
        let model = super::trained(&ck, &cpu, &plan, self.classes());
        let dir = tempfile::tempdir().unwrap();
        let config = self.export(dir.path(), &model, &plan);
        let key = self
            .family
            .hf_name("bert.encoder.layer.2.attention.self.value")
            .replace('.', "\\.");
        assert_eq!(
            config["rank_pattern"],
            serde_json::json!({ key.clone(): 2 })
        );
        assert_eq!(config["alpha_pattern"], serde_json::json!({ key: 3.0 }));
        let (back, import) = spafit::adapter::import_peft(dir.path(), &ck, &cpu).unwrap();
        assert!(
            !import
                .notes
                .iter()
                .any(|n| n.contains("matches no adapted module")),
            "{:?}",
            import.notes
        );
        let reopened = spafit::adapter::open_adapter(dir.path(), &ck, &cpu).unwrap();
        assert_eq!(reopened.plan.lora, plan.lora);
        for inputs in ["singles", "pairs"] {
            assert_eq!(
                self.logits_of(&ck, &cpu, &back, inputs),
                self.logits_of(&ck, &cpu, &model, inputs),
                "{inputs}"
            );
        }

        // DoRA adapters export `use_dora` with a magnitude per adapted map under the
        // family's own module names, and import back to the same plan and logits.
        let mut plan = self.lora_plan();
        if let Some(lora) = plan.lora.as_mut() {
            lora.dora = true;
        }
        let model = super::trained(&ck, &cpu, &plan, self.classes());
        let dir = tempfile::tempdir().unwrap();
        let config = self.export(dir.path(), &model, &plan);
        assert_eq!(config["use_dora"], true);
        let ours = WeightsFile::open(&dir.path().join("adapter_model.safetensors")).unwrap();
        let magnitudes: Vec<&Param<CpuBackend>> = model
            .params()
            .into_iter()
            .filter(|p| p.name.ends_with("lora_magnitude_vector"))
            .collect();
        assert!(!magnitudes.is_empty());
        for p in magnitudes {
            let theirs = format!("base_model.model.{}", self.family.hf_name(&p.name));
            assert_eq!(
                ours.read_f64(&theirs, p.value.shape()).unwrap(),
                cpu.to_f64(&p.value).unwrap(),
                "{theirs}"
            );
        }
        let reopened = spafit::adapter::open_adapter(dir.path(), &ck, &cpu).unwrap();
        assert_eq!(reopened.plan.lora, plan.lora);
        for inputs in ["singles", "pairs"] {
            assert_eq!(
                self.logits_of(&ck, &cpu, &reopened.model, inputs),
                self.logits_of(&ck, &cpu, &model, inputs),
                "DoRA {inputs}"
            );
        }
    }

    /// PEFT's adapter merged into `model/` is `architecture` (the family's sequence
    /// classifier) with the base's tensor names and `model_type`, and gives PEFT's logits as a
    /// checkpoint of its own. Returns the merge's config.json.
    pub fn check_merge_of_peft_adapter(&self, architecture: &str) -> Value {
        let ck = self.checkpoint("model");
        let cpu = CpuBackend::f64();
        let opened = spafit::adapter::open_adapter(&self.dir.join("peft-lora"), &ck, &cpu).unwrap();
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
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let model_type = ck.config.model_type.as_deref();
        assert_eq!(config["architectures"], serde_json::json!([architecture]));
        assert_eq!(config["model_type"].as_str(), model_type);
        assert_eq!(
            sorted_names(&WeightsFile::open(&out.join("model.safetensors")).unwrap()),
            sorted_names(&ck.weights)
        );
        let merged = Checkpoint::open(&out).unwrap();
        let model = BertClassifier::from_fine_tuned(&merged, &cpu).unwrap();
        for inputs in ["singles", "pairs"] {
            let e = rel_err(
                &self.logits_of(&merged, &cpu, &model, inputs),
                &read(&self.reference(), &format!("peft.{inputs}.logits")),
            );
            println!("merged, {inputs}: logits rel err {e:.2e}");
            assert!(e <= 1e-12, "{inputs}: {e:e}");
        }
        config
    }

    /// Each config's plan on the CUDA backend (the CPU stand-in without a GPU), f32, with
    /// dropout on: logits, loss and every trainable gradient of the pairs as the f64 CPU
    /// reference gives them (≤ 1e-4).
    pub fn check_on_cuda(&self, configs: &[PeftConfig]) {
        use spafit::backend::cuda::CudaBackend;
        use spafit::tensor::DType;
        let cuda = CudaBackend::hardware_or_emulated(DType::F32)
            .map(CudaBackend::with_poisoned_outputs)
            .unwrap_or_else(|e| panic!("no CUDA backend, not even the CPU stand-in: {e}"));
        self.check_on(&cuda, configs, 1e-4);
    }

    /// Each config's plan on `backend`, with dropout on: logits, loss and every trainable
    /// gradient of the pairs as the f64 CPU reference gives them (≤ `tolerance` relative).
    pub fn check_on<B: Backend>(&self, backend: &B, configs: &[PeftConfig], tolerance: f64) {
        let ck = self.checkpoint("model");
        for config in configs {
            let plan = PeftPlan::new(&config.clone().for_family(self.family), 3).unwrap();
            let reference = self.trained_outputs(&ck, &CpuBackend::f64(), &plan);
            let device = self.trained_outputs(&ck, backend, &plan);
            assert_eq!(reference.len(), device.len());
            let mut worst: f64 = 0.0;
            for (i, (ours, want)) in device.iter().zip(&reference).enumerate() {
                let e = rel_err(ours, want);
                // The key biases' gradients are zero up to rounding; the rest is compared.
                if want.iter().any(|v| v.abs() > 1e-9) {
                    assert!(e <= tolerance, "{}: output {i}: {e:e}", plan.method);
                    worst = worst.max(e);
                }
            }
            println!(
                "{}: {} against the f64 CPU: worst rel err {worst:.2e} over the logits, \
                 the loss and {} gradients",
                plan.method,
                backend.name(),
                device.len() - 2
            );
        }
    }

    /// Logits, loss and every trainable gradient of the pairs under `plan`, dropout on.
    fn trained_outputs<B: Backend>(
        &self,
        ck: &Checkpoint,
        backend: &B,
        plan: &PeftPlan,
    ) -> Vec<Vec<f64>> {
        let model = super::trained(ck, backend, plan, self.classes());
        let input = ModelInput::for_model(backend, &self.encode(ck, "pairs"), &ck.config).unwrap();
        let mut tape = Tape::new(backend.clone());
        let mut dropouts = DropoutPlan::train(0.1, 0.1, 0.1, 7);
        let logits = model.forward(&mut tape, &input, &mut dropouts).unwrap();
        let loss = model
            .loss(&mut tape, &logits, &self.labels(backend, "pairs"))
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

    /// The fixture's `model/` copied to `to` with a vocab.txt (tokenizer.json's vocabulary in
    /// id order) in place of its tokenizer.json.
    pub fn copy_model_with_vocab_txt(&self, to: &Path) {
        self.copy_model(to, |name| name != "tokenizer.json");
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir().join("model/tokenizer.json")).unwrap(),
        )
        .unwrap();
        let mut vocab: Vec<(u64, &str)> = json["model"]["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(token, id)| (id.as_u64().unwrap(), token.as_str()))
            .collect();
        vocab.sort();
        let lines: Vec<&str> = vocab.iter().map(|(_, token)| *token).collect();
        std::fs::write(to.join("vocab.txt"), lines.join("\n") + "\n").unwrap();
    }

    /// [`FamilyFixture::check_on_cuda`] for full fine-tuning and SPAFIT (layer 0 frozen,
    /// layer 1 bias-only, layer 2 LoRA of rank 4 + bias): every family's CUDA check.
    pub fn check_full_and_spafit_on_cuda(&self) {
        self.check_on_cuda(&Self::full_and_spafit());
    }

    /// Full fine-tuning and SPAFIT (layer 0 frozen, layer 1 bias-only, layer 2 LoRA of rank
    /// 4 + bias).
    pub fn full_and_spafit() -> [PeftConfig; 2] {
        let mut spafit_config = PeftConfig::new(Method::Spafit);
        spafit_config.n1 = Boundary::Layer(1);
        spafit_config.n2 = Boundary::Layer(2);
        spafit_config.lora.rank = 4;
        [PeftConfig::new(Method::Full), spafit_config]
    }

    /// `spafit train` (SPAFIT 1/2) from `model_dir` on the CPU and on `cuda-emu`, whose
    /// logged losses agree (f32, ≤ 1e-4 relative); `--train-pooler` refused naming the family
    /// where the pooler is the head's dense map, which trains anyway; `eval`, `predict` and
    /// `merge` of the CPU's
    /// adapter, the merge evaluating as the adapter does.
    pub fn check_command_line(&self, model_dir: &Path) {
        self.check_command_line_on(model_dir, &["cpu", "cuda-emu"]);
    }

    /// [`FamilyFixture::check_command_line`] training on `devices` alone (the CPU first),
    /// their losses compared where there are two.
    pub fn check_command_line_on(&self, model_dir: &Path, devices: &[&str]) {
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
        let model = model_dir.display().to_string();
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
        let losses = |out: &str| logged_losses(&dir.path().join(out));
        for &device in devices {
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
        // Where the pooler is the head's dense map, every command that builds a model from the
        // flags refuses the flag alike (BERT's and ERNIE's pooler is the encoder's).
        let with_flag = ["--method", "lora", "--train-pooler"];
        let refusing = self.family.pooler_is_head();
        for command in [
            &["train", "--train-file", "train.csv", "--output", "pooler"][..],
            &["gradcheck"],
            &[
                "bench",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--batch-size",
                "1",
            ],
        ]
        .into_iter()
        .filter(|_| refusing)
        {
            let refused = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
                .args(command)
                .args(["--model", &model])
                .args(with_flag)
                .current_dir(dir.path())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert!(
                !refused.status.success()
                    && stderr.contains("--train-pooler")
                    && stderr.contains(self.family.display()),
                "{}: {stderr}",
                command[0]
            );
        }
        let cpu = losses(devices[0]);
        // Four steps and two evaluations.
        assert_eq!(cpu.len(), 6, "{cpu:?}");
        for &device in &devices[1..] {
            let other = losses(device);
            assert_eq!(cpu.len(), other.len());
            for (a, b) in cpu.iter().zip(&other) {
                assert!((a - b).abs() <= 1e-4 * b.abs(), "{cpu:?} vs {other:?}");
            }
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
        let (a, b) = (last_json_loss(&eval), last_json_loss(&merged_eval));
        assert!((a - b).abs() <= 1e-6 * a.abs(), "adapter {a} vs merged {b}");
    }
}

/// Folder `from` copied to `to`, the files `keep` keeps.
pub fn copy_folder(from: &Path, to: &Path, keep: impl Fn(&str) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if keep(&name) {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// The losses a run logged in `run/metrics.jsonl`: its training and evaluation lines', in
/// order.
pub fn logged_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["type"] == "train" || l["type"] == "eval")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect()
}

/// Removes `tokenizer_class` from `dir`'s tokenizer_config.json; the class it named.
pub fn remove_tokenizer_class(dir: &Path) -> Option<Value> {
    let path = dir.join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let class = config.as_object_mut().unwrap().remove("tokenizer_class");
    std::fs::write(&path, config.to_string()).unwrap();
    class
}

/// Tensor `name` of `file` as f64 values.
pub fn read(file: &WeightsFile, name: &str) -> Vec<f64> {
    let shape = file
        .shape(name)
        .unwrap_or_else(|| panic!("the file lacks {name}"));
    file.read_f64(name, &Shape::new(shape)).unwrap()
}

/// A file's tensor names, sorted.
pub fn sorted_names(file: &WeightsFile) -> Vec<String> {
    let mut names = file.names().to_vec();
    names.sort();
    names
}

/// A CSV of `text,label` rows.
pub fn sentiment_csv(rows: &[(&str, u8)]) -> String {
    let mut s = String::from("text,label\n");
    for (t, l) in rows {
        s.push_str(&format!("\"{t}\",{l}\n"));
    }
    s
}

/// The `loss` of the last JSON line of `stdout`.
pub fn last_json_loss(stdout: &str) -> f64 {
    let line: Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    line["loss"]
        .as_f64()
        .unwrap_or_else(|| panic!("no loss in {line}"))
}

/// A tensor of a safetensors file: name, dtype (F32 or F64), shape, values.
pub type Stored = (String, safetensors::Dtype, Vec<usize>, Vec<f64>);

/// Writes `tensors` as a safetensors file at `path`, each in its dtype.
pub fn write_tensors(path: &Path, tensors: &[Stored]) {
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
pub fn read_tensors(path: &Path) -> Vec<Stored> {
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

/// Whether the encoder identity of a copy of checkpoint folder `folder`, with one value of
/// tensor `tensor` changed, differs from the original's.
pub fn identity_changes_with(folder: &Path, tensor: &str) -> bool {
    let original = Checkpoint::open(folder).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    copy_folder(folder, tmp.path(), |_| true);
    let path = tmp.path().join("model.safetensors");
    let mut tensors = read_tensors(&path);
    let (_, _, _, values) = tensors
        .iter_mut()
        .find(|t| t.0 == tensor)
        .unwrap_or_else(|| panic!("no {tensor}"));
    values[3] += 0.25;
    write_tensors(&path, &tensors);
    let copy = Checkpoint::open(tmp.path()).unwrap();
    copy.weights.encoder_sha256().unwrap() != original.weights.encoder_sha256().unwrap()
}
