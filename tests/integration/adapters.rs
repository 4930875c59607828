//! Adapters on disk: round trip, refusal of another base or a torn file, PEFT export, and
//! merged LoRA equal to the unmerged model.

use crate::common;

use common::rel_err;
use spafit::adapter::{
    export_peft, import_peft, load_adapter, open_adapter, read_tensors, save_adapter, sha256_hex,
    tensors_to_safetensors, PeftExportRecord, TrainingInputs, MANIFEST_FILE, WEIGHTS_FILE,
};
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::data::{Dataset, Example, TaskKind};
use spafit::model::{BertClassifier, ModelInput};
use spafit::nn::DropoutPlan;
use spafit::peft::{peft_lora_init, Boundary, Method, PeftConfig, PeftPlan};
use spafit::rng::SplitMix;
use spafit::text::TextInput;
use spafit::train::Prediction;
use spafit::Error;

fn checkpoint() -> Checkpoint {
    Checkpoint::open(common::minilm_dir()).unwrap()
}

fn spafit_plan() -> PeftPlan {
    let mut c = PeftConfig::new(Method::Spafit);
    c.n1 = Boundary::Layer(2);
    c.n2 = Boundary::Layer(4);
    c.train_pooler = true;
    PeftPlan::new(&c, 6).unwrap()
}

/// A model under `plan` whose trainable tensors are all random (as after training).
fn trained(ck: &Checkpoint, cpu: &CpuBackend, plan: &PeftPlan) -> BertClassifier<CpuBackend> {
    let mut model = BertClassifier::from_checkpoint(ck, cpu, 3, 0).unwrap();
    model.apply_plan(plan, &mut |_, s| cpu.zeros(s)).unwrap();
    let mut rng = SplitMix::new(5);
    for p in model.params_mut().into_iter().filter(|p| p.trainable) {
        let base = cpu.to_f64(&p.value).unwrap();
        let v: Vec<f64> = base
            .iter()
            .map(|b| b + rng.uniform_in(-0.05, 0.05))
            .collect();
        p.value = cpu.tensor_from_f64(p.value.shape().clone(), &v).unwrap();
    }
    model
}

fn logits(ck: &Checkpoint, cpu: &CpuBackend, model: &BertClassifier<CpuBackend>) -> Vec<f64> {
    let tok = ck.tokenizer(32).unwrap();
    let enc = tok
        .encode_batch(&[
            TextInput::Single("a gorgeous, witty movie"),
            TextInput::Pair("is it dull?", "no, it is sharp and funny"),
        ])
        .unwrap();
    let input = ModelInput::new(cpu, &enc).unwrap();
    let mut tape = Tape::new(*cpu);
    let out = model
        .forward(&mut tape, &input, &mut DropoutPlan::eval())
        .unwrap();
    cpu.to_f64(out.value()).unwrap()
}

/// `model`, trained under `plan`, saved with class names `labels` (single texts cut to 24
/// tokens) in a folder of its own.
fn saved(
    ck: &Checkpoint,
    cpu: &CpuBackend,
    model: &BertClassifier<CpuBackend>,
    plan: &PeftPlan,
    labels: &[String],
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    save_adapter(
        dir.path(),
        cpu,
        model,
        plan,
        &ck.weights,
        Some(labels),
        TrainingInputs {
            text_pairs: Some(false),
            max_len: Some(24),
        },
    )
    .unwrap();
    dir
}

/// A model whose trainable tensors were changed by hand after its plan was applied (the
/// parameters are public) is refused by the save, the PEFT export and the trainer alike,
/// naming the tensor, and nothing is written: saved, it was an adapter no load accepted.
#[test]
fn trainables_changed_after_the_plan_are_refused_before_anything_is_written() {
    use spafit::train::{TrainConfig, Trainer};
    let ck = checkpoint();
    let cpu = CpuBackend::f32();
    let plan = spafit_plan();
    type Change = fn(&mut BertClassifier<CpuBackend>, &CpuBackend);
    let cases: [(Change, &str); 4] = [
        // Said as that, not as the missing layer's tensors frozen.
        (
            |m, _| drop(m.bert.layers.pop()),
            "the model has 5 encoder layers where its config",
        ),
        (
            |m, _| {
                let p = m.params_mut().into_iter();
                let mut p = p.filter(|p| p.name.ends_with("layer.0.attention.self.query.weight"));
                p.next().unwrap().trainable = true;
            },
            "`bert.encoder.layer.0.attention.self.query.weight` trains, which the plan freezes",
        ),
        (
            |m, _| m.classifier.weight.trainable = false,
            "`classifier.weight` is frozen, which the plan trains",
        ),
        (
            |m, cpu| m.classifier.bias.value = cpu.zeros([2].into()).unwrap(),
            "`classifier.bias` has shape [2] where the plan made it [3]",
        ),
    ];
    // A head replaced whole by one of another class count is no such change: it saves, and
    // the adapter loads with that head.
    let mut model = trained(&ck, &cpu, &plan);
    let hidden = model.classifier.weight.value.dims()[1];
    model.classifier.weight.value = cpu.zeros([2, hidden].into()).unwrap();
    model.classifier.bias.value = cpu.zeros([2].into()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(
        dir.path(),
        &cpu,
        &model,
        &plan,
        &ck.weights,
        None,
        TrainingInputs::default(),
    )
    .unwrap();
    assert_eq!(
        load_adapter(dir.path(), &ck, &cpu).unwrap().0.num_labels(),
        2
    );
    for (change, says) in cases {
        let mut model = trained(&ck, &cpu, &plan);
        change(&mut model, &cpu);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        let e = save_adapter(
            &out,
            &cpu,
            &model,
            &plan,
            &ck.weights,
            None,
            TrainingInputs::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(says), "{e}");
        assert!(!out.exists(), "{e}");
        let record = PeftExportRecord {
            base_model_name_or_path: "x",
            ..PeftExportRecord::default()
        };
        let e = export_peft(&out, &cpu, &model, &plan, &record)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
        assert!(!out.exists(), "{e}");
        let data = Dataset {
            name: "two".into(),
            kind: TaskKind::Classification {
                labels: vec!["0".into(), "1".into(), "2".into()],
            },
            examples: ["fine", "dull"]
                .map(|t| Example {
                    text_a: t.into(),
                    text_b: None,
                    target: Some(spafit::data::Target::Class(1)),
                })
                .to_vec(),
            skipped: Vec::new(),
            source_lines: Vec::new(),
        };
        let config = TrainConfig {
            output_dir: Some(dir.path().join("run")),
            ..TrainConfig::default()
        };
        let tok = ck.tokenizer(16).unwrap();
        let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
            .fit(&tok, &data, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
        assert!(!dir.path().join("run").exists(), "{e}");
    }
}

#[test]
fn adapter_round_trip_and_refusals() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let plan = spafit_plan();
    let model = trained(&ck, &cpu, &plan);
    let labels = vec!["a".to_string(), "b".into(), "c".into()];
    let dir = saved(&ck, &cpu, &model, &plan, &labels);
    // Saving the same adapter again writes nothing (a resume saves the best it restored:
    // on a full disk that must not fail); another cut of the texts replaces the manifest.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let inode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().ino();
        let before = (inode(WEIGHTS_FILE), inode(MANIFEST_FILE));
        let save = |max_len| {
            let inputs = TrainingInputs {
                text_pairs: Some(false),
                max_len: Some(max_len),
            };
            save_adapter(
                dir.path(),
                &cpu,
                &model,
                &plan,
                &ck.weights,
                Some(&labels),
                inputs,
            )
            .unwrap()
        };
        save(24);
        assert_eq!((inode(WEIGHTS_FILE), inode(MANIFEST_FILE)), before);
        save(25);
        assert_ne!(inode(MANIFEST_FILE), before.1);
        save(24);
    }
    // The inputs' cut comes back with the adapter, for evaluating it the same way.
    assert_eq!(
        open_adapter(dir.path(), &ck, &cpu).unwrap().max_len,
        Some(24)
    );

    // Only the trainable tensors are stored.
    let stored = read_tensors(&cpu, &dir.path().join(WEIGHTS_FILE)).unwrap();
    assert_eq!(
        stored.keys().cloned().collect::<Vec<_>>(),
        model.trainable_names()
    );
    assert!(
        stored.contains_key("bert.pooler.dense.weight")
            && !stored.contains_key("bert.encoder.layer.0.output.dense.weight")
    );

    let (loaded, manifest) = load_adapter(dir.path(), &ck, &cpu).unwrap();
    // Trained on single texts: data of text pairs is refused, single texts pass.
    assert_eq!(manifest.text_pairs, Some(false));
    let head = open_adapter(dir.path(), &ck, &cpu).unwrap().head();
    let kind = TaskKind::Classification {
        labels: labels.clone(),
    };
    let data = |b: Option<&str>| {
        let example = Example {
            text_a: "a film".into(),
            text_b: b.map(String::from),
            target: None,
        };
        Dataset::from_examples("pairs.csv", kind.clone(), vec![example])
    };
    let e = head
        .check_texts(&data(Some("another")), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trained on single texts") && e.contains("pairs.csv has text pairs"),
        "{e}"
    );
    head.check_texts(&data(None), dir.path()).unwrap();
    // Texts in memory through the opened adapter: the softmax of the model's own logits for
    // the same text; pairs are refused, as the adapter was trained on single texts.
    let opened = open_adapter(dir.path(), &ck, &cpu).unwrap();
    let tok = ck.tokenizer(32).unwrap();
    let answers = opened
        .predict_texts(&cpu, &tok, &["a gorgeous, witty movie"], 4)
        .unwrap();
    let Prediction::Class {
        class,
        probabilities,
        ..
    } = &answers[0]
    else {
        panic!("{answers:?}")
    };
    let row = &logits(&ck, &cpu, &model)[..3];
    let z: f64 = row.iter().map(|v| v.exp()).sum();
    for (got, want) in probabilities.iter().zip(row.iter().map(|v| v.exp() / z)) {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
    assert_eq!(row[*class], row.iter().cloned().fold(f64::MIN, f64::max));
    let e = opened
        .predict_text_pairs(&cpu, &tok, &[("is it dull?", "no")], 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("trained on single texts"), "{e}");
    assert_eq!(manifest.labels.as_deref(), Some(labels.as_slice()));
    assert_eq!(manifest.plan(dir.path()).unwrap(), plan);
    let (a, b) = (logits(&ck, &cpu, &model), logits(&ck, &cpu, &loaded));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "{a:?} vs {b:?}"
    );

    // Another base model: refused, naming both identities. The identity is the encoder's
    // tensors'; a manifest from before it was recorded is checked by the file's hash.
    let manifest_path = dir.path().join(MANIFEST_FILE);
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let encoder = ck.weights.encoder_sha256().unwrap();
    assert!(original.contains(encoder) && original.contains(ck.weights.sha256().unwrap()));
    let with_base = |encoder_sha: Option<&str>, file_sha: &str| {
        let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
        match encoder_sha {
            Some(sha) => json["base_encoder_sha256"] = sha.into(),
            None => drop(json.as_object_mut().unwrap().remove("base_encoder_sha256")),
        }
        json["base_model_sha256"] = file_sha.into();
        std::fs::write(&manifest_path, json.to_string()).unwrap();
        let loaded = load_adapter(dir.path(), &ck, &cpu);
        std::fs::write(&manifest_path, &original).unwrap();
        loaded.map(|_| ())
    };
    let zeros = "0".repeat(64);
    let e = with_base(Some(&zeros), ck.weights.sha256().unwrap()).expect_err("another encoder");
    assert!(
        matches!(e, Error::Mismatch { .. })
            && e.to_string().contains(encoder)
            && e.to_string().contains(&zeros),
        "{e}"
    );
    // The encoder decides, not the file (the same tensors may be saved again).
    with_base(Some(encoder), &zeros).expect("the same encoder in another file");
    let e = with_base(None, &zeros).expect_err("an older manifest, another file");
    assert!(
        matches!(e, Error::Mismatch { .. }) && e.to_string().contains(ck.weights.sha256().unwrap()),
        "{e}"
    );
    with_base(None, ck.weights.sha256().unwrap()).expect("an older manifest, the same file");

    // An edited manifest whose parts cannot belong together: refused, naming the field.
    let edit = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
        change(&mut json);
        std::fs::write(&manifest_path, json.to_string()).unwrap();
        let e = load_adapter(dir.path(), &ck, &cpu).expect_err("edited");
        std::fs::write(&manifest_path, &original).unwrap();
        e.to_string()
    };
    let e = edit(&|j| j["version"] = 99.into());
    assert!(e.contains("`version` 99"), "{e}");
    let e = edit(&|j| j["method"] = "full".into());
    assert!(e.contains("`strata`") && e.contains("full"), "{e}");
    let e = edit(&|j| j["boundaries"] = serde_json::json!([1, 4]));
    assert!(e.contains("`boundaries`"), "{e}");
    let e = edit(&|j| j["lora"] = serde_json::Value::Null);
    assert!(e.contains("`lora`"), "{e}");
    let e = edit(&|j| j["labels"] = serde_json::json!(["a", "a", "c"]));
    assert!(e.contains("`labels`") && e.contains("repeated"), "{e}");
    let e = edit(&|j| j["strata"].as_array_mut().unwrap().truncate(5));
    assert!(e.contains("strata for 5 layers"), "{e}");
    // The hash covers the weights, not the manifest: a head size edited there must be
    // refused against the stored head, before it sizes anything (10^12 would abort).
    for outputs in [1_000_000_000_000u64, 0, 2] {
        let e = edit(&|j| {
            j["num_labels"] = outputs.into();
            j["labels"] = serde_json::Value::Null;
        });
        assert!(
            e.contains(&format!("`num_labels` is {outputs}")) && e.contains("3 rows"),
            "{e}"
        );
    }

    // Weights holding a tensor the manifest does not list, the hash made to match: refused,
    // naming it, not loaded without it.
    let weights = dir.path().join(WEIGHTS_FILE);
    let good = std::fs::read(&weights).unwrap();
    let mut tensors: Vec<_> = read_tensors(&cpu, &weights).unwrap().into_iter().collect();
    tensors.push((
        "encoder.layer.0.output.dense.bias".into(),
        cpu.zeros(vec![8].into()).unwrap(),
    ));
    std::fs::write(&weights, tensors_to_safetensors(&cpu, &tensors).unwrap()).unwrap();
    let hash = sha256_hex(&std::fs::read(&weights).unwrap());
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    json["weights_sha256"] = hash.into();
    std::fs::write(&manifest_path, json.to_string()).unwrap();
    let e = load_adapter(dir.path(), &ck, &cpu).expect_err("an unlisted tensor");
    assert!(
        e.to_string()
            .contains("holds `encoder.layer.0.output.dense.bias`, which the manifest"),
        "{e}"
    );
    std::fs::write(&weights, &good).unwrap();
    std::fs::write(&manifest_path, &original).unwrap();
    load_adapter(dir.path(), &ck, &cpu).expect("restored");

    // Weights that do not match the manifest (a torn write or an edit): refused.
    let mut bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(dir.path().join(WEIGHTS_FILE), bytes).unwrap();
    let e = load_adapter(dir.path(), &ck, &cpu).expect_err("torn");
    assert!(e.to_string().contains("do not match the manifest"), "{e}");

    // No temporary files are left behind by the atomic writes.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn merged_lora_gives_the_same_logits() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let plan = spafit_plan();
    let mut model = trained(&ck, &cpu, &plan);
    let before = logits(&ck, &cpu, &model);
    model.merge_lora(&cpu).unwrap();
    assert!(model.params().iter().all(|p| !p.name.contains("lora_")));
    let after = logits(&ck, &cpu, &model);
    let e = rel_err(&after, &before);
    println!("MERGE: merged vs unmerged logits rel err {e:.2e}");
    assert!(e < 1e-12, "{e}");
    // The merge changed the weights that carried adapters, and only those.
    let base = BertClassifier::from_checkpoint(&ck, &cpu, 3, 0).unwrap();
    let changed = |name: &str| {
        let a = model.params().into_iter().find(|p| p.name == name).unwrap();
        let b = base.params().into_iter().find(|p| p.name == name).unwrap();
        cpu.to_f64(&a.value).unwrap() != cpu.to_f64(&b.value).unwrap()
    };
    assert!(changed("bert.encoder.layer.5.intermediate.dense.weight"));
    assert!(!changed("bert.encoder.layer.3.intermediate.dense.weight"));
}

#[test]
fn peft_export_names_and_config() {
    let ck = checkpoint();
    let cpu = CpuBackend::f32();
    let plan = spafit_plan();
    let model = trained(&ck, &cpu, &plan);
    let dir = tempfile::tempdir().unwrap();
    let names = ["neg", "neutral", "pos"].map(String::from);
    export_peft(
        dir.path(),
        &cpu,
        &model,
        &plan,
        &PeftExportRecord {
            base_model_name_or_path: "sentence-transformers/all-MiniLM-L6-v2",
            labels: Some(&names),
            inputs: TrainingInputs {
                max_len: Some(40),
                text_pairs: Some(false),
            },
            run_dir: None,
            base: Some(&ck.weights),
        },
    )
    .unwrap();
    // The class names, the inputs' cut and whether they were pairs, which PEFT's files have
    // no place for, come back from the note beside them, and a note that does not fit the
    // head is refused, naming it.
    let (_, import) = import_peft(dir.path(), &ck, &cpu).unwrap();
    assert_eq!(import.labels.as_deref(), Some(names.as_slice()));
    assert_eq!(import.max_len, Some(40));
    assert_eq!(import.text_pairs, Some(false));
    let opened = open_adapter(dir.path(), &ck, &cpu).unwrap();
    assert_eq!(opened.text_pairs, Some(false));
    // Inputs are cut where training cut them, not at the caller's fallback.
    let tok = opened.tokenizer(&ck, 64).unwrap();
    assert_eq!(tok.max_len(), 40);
    let e = opened
        .predict_text_pairs(&cpu, &tok, &[("a", "b")], 4)
        .expect_err("an adapter trained on single texts");
    assert!(e.to_string().contains("single texts"), "{e}");
    // load_adapter reads spafit's own format, and says what a folder holds otherwise.
    let e = load_adapter(dir.path(), &ck, &cpu).unwrap_err().to_string();
    assert!(e.contains("holds a PEFT adapter, not a spafit one"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = load_adapter(empty.path(), &ck, &cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no spafit adapter"), "{e}");
    let e = load_adapter(&dir.path().join("adapter_config.json"), &ck, &cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a file, not an adapter folder"), "{e}");
    let note = dir.path().join("spafit_export.json");
    let text = std::fs::read_to_string(&note).unwrap();
    std::fs::write(&note, text.replace("\"neutral\",", "")).unwrap();
    let e = import_peft(dir.path(), &ck, &cpu).expect_err("two names, three outputs");
    assert!(
        e.to_string().contains("spafit_export.json")
            && e.to_string()
                .contains("2 class names for a classifier of 3 outputs"),
        "{e}"
    );
    // A note left beside weights PEFT saved later (another hash) is passed over.
    let stale = serde_json::from_str::<serde_json::Value>(&text).unwrap()["adapter_model_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(&note, text.replace(&stale, &"0".repeat(64))).unwrap();
    let (_, import) = import_peft(dir.path(), &ck, &cpu).unwrap();
    assert_eq!(
        (import.labels, import.max_len, import.text_pairs),
        (None, None, None)
    );
    let warning = import.warnings.join("\n");
    for ignored in [
        "class names",
        "cut of the texts",
        "whether the texts were pairs",
    ] {
        assert!(warning.contains(ignored), "{warning}");
    }
    // A note naming another base encoder is refused, as spafit's own adapters are (the
    // export had loaded on any base of the right shapes).
    let base = serde_json::from_str::<serde_json::Value>(&text).unwrap()["base_encoder_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(base, ck.weights.encoder_sha256().unwrap());
    std::fs::write(&note, text.replace(&base, &"0".repeat(64))).unwrap();
    let e = import_peft(dir.path(), &ck, &cpu).expect_err("another base");
    assert!(
        matches!(e, spafit::Error::Mismatch { .. })
            && e.to_string().contains("spafit_export.json")
            && e.to_string().contains("encoder tensors"),
        "{e}"
    );
    // A cut that is not a count of tokens is refused, naming the file.
    std::fs::write(&note, text.replace("\"max_len\": 40", "\"max_len\": -3")).unwrap();
    let e = import_peft(dir.path(), &ck, &cpu).expect_err("max_len -3");
    assert!(
        e.to_string().contains("spafit_export.json") && e.to_string().contains("`max_len` is -3"),
        "{e}"
    );
    // An export killed between its renames: the weights are in place, their note still
    // staged under its temporary name. The staged note is read (it describes these weights);
    // a staged leftover describing other weights is not.
    std::fs::write(&note, &text).unwrap();
    let staged = dir.path().join(".spafit_export.json.tmp-4242-7");
    std::fs::rename(&note, &staged).unwrap();
    let (_, import) = import_peft(dir.path(), &ck, &cpu).unwrap();
    assert_eq!((import.max_len, import.text_pairs), (Some(40), Some(false)));
    assert_eq!(import.labels.as_deref(), Some(names.as_slice()));
    // Killed one rename earlier, its config still staged too: the config in place may be an
    // earlier export's, so the folder is refused rather than read with it.
    let staged_config = dir.path().join(".adapter_config.json.tmp-4242-6");
    std::fs::copy(dir.path().join("adapter_config.json"), &staged_config).unwrap();
    let e = import_peft(dir.path(), &ck, &cpu).expect_err("a torn export");
    assert!(
        e.to_string()
            .contains("stopped while renaming its files into place"),
        "{e}"
    );
    std::fs::remove_file(&staged_config).unwrap();
    std::fs::write(&staged, text.replace(&stale, &"0".repeat(64))).unwrap();
    let (_, import) = import_peft(dir.path(), &ck, &cpu).unwrap();
    assert_eq!((import.labels, import.max_len), (None, None));
    std::fs::remove_file(&staged).unwrap();
    std::fs::write(&note, &text).unwrap();
    let tensors = read_tensors(&cpu, &dir.path().join("adapter_model.safetensors")).unwrap();
    for key in [
        "base_model.model.bert.encoder.layer.4.attention.self.query.lora_A.weight",
        "base_model.model.bert.encoder.layer.5.output.dense.lora_B.weight",
        "base_model.model.bert.encoder.layer.4.attention.self.query.base_layer.bias",
        "base_model.model.bert.encoder.layer.4.output.LayerNorm.bias",
        "base_model.model.bert.encoder.layer.2.attention.self.query.bias",
        "base_model.model.classifier.weight",
        "base_model.model.bert.pooler.dense.weight",
    ] {
        assert!(
            tensors.contains_key(key),
            "missing {key}; have {:?}",
            tensors.keys().take(5).collect::<Vec<_>>()
        );
    }
    assert_eq!(tensors.len(), model.trainable_names().len());
    assert_eq!(
        tensors["base_model.model.bert.encoder.layer.4.attention.self.query.lora_A.weight"].dims(),
        &[8, 384]
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    assert_eq!(config["lora_alpha"], 16.0);
    assert_eq!(
        config["target_modules"],
        "bert\\.encoder\\.layer\\.(4|5)\\.(attention\\.self\\.query|attention\\.self\\.key|attention\\.self\\.value|attention\\.output\\.dense|intermediate\\.dense|output\\.dense)"
    );
    assert_eq!(
        config["modules_to_save"],
        serde_json::json!(["classifier", "pooler"])
    );
    // SPAFIT's bias-only layers: PEFT keeps biases trainable (and saves them) only under
    // `bias: "all"`.
    assert_eq!(config["bias"], "all");

    let bitfit = PeftPlan::new(&PeftConfig::new(Method::BitFit), 6).unwrap();
    let e = export_peft(
        dir.path(),
        &cpu,
        &model,
        &bitfit,
        &PeftExportRecord {
            base_model_name_or_path: "x",
            ..PeftExportRecord::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("no LoRA adapter"), "{e}");

    // Never into a spafit adapter's folder: the two adapters would mix, and nothing of the
    // spafit one is touched.
    let own = tempfile::tempdir().unwrap();
    save_adapter(
        own.path(),
        &cpu,
        &model,
        &plan,
        &ck.weights,
        None,
        TrainingInputs::default(),
    )
    .unwrap();
    let saved: Vec<_> = std::fs::read_dir(own.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let e = export_peft(
        own.path(),
        &cpu,
        &model,
        &plan,
        &PeftExportRecord {
            base_model_name_or_path: "x",
            ..PeftExportRecord::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("holds a spafit adapter or run")
            && e.to_string().contains("adapter.json"),
        "{e}"
    );
    let after: Vec<_> = std::fs::read_dir(own.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved, after);
    // A folder someone filled with both (neither writer does) is not read as either.
    std::fs::copy(
        dir.path().join("adapter_config.json"),
        own.path().join("adapter_config.json"),
    )
    .unwrap();
    let e = open_adapter(own.path(), &ck, &cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("holds both a spafit adapter") && e.contains("ambiguous"),
        "{e}"
    );
}

/// What the loader would refuse is refused when saving or training, before anything is
/// written: a plan other than the model's, LoRA merged into the weights, class names the
/// head cannot carry, non-finite weights, and in-memory data whose targets do not fit.
#[test]
fn adapters_the_loader_would_refuse_are_never_written() {
    use spafit::data::Target;
    use spafit::train::{TrainConfig, Trainer};
    let ck = checkpoint();
    let cpu = CpuBackend::f32();
    let plan = spafit_plan();
    let dir = tempfile::tempdir().unwrap();
    let save = |model: &BertClassifier<CpuBackend>, plan: &PeftPlan, labels: Option<&[String]>| {
        save_adapter(
            dir.path(),
            &cpu,
            model,
            plan,
            &ck.weights,
            labels,
            TrainingInputs {
                text_pairs: Some(false),
                max_len: None,
            },
        )
        .err()
        .map(|e| e.to_string())
    };
    // The PEFT export refuses the same, with the same words.
    let export =
        |model: &BertClassifier<CpuBackend>, plan: &PeftPlan, labels: Option<&[String]>| {
            export_peft(
                dir.path(),
                &cpu,
                model,
                plan,
                &PeftExportRecord {
                    base_model_name_or_path: "x",
                    labels,
                    ..PeftExportRecord::default()
                },
            )
            .err()
            .map(|e| e.to_string())
        };
    let refused = |model: &BertClassifier<CpuBackend>,
                   plan: &PeftPlan,
                   labels: Option<&[String]>,
                   needle: &str| {
        for e in [save(model, plan, labels), export(model, plan, labels)] {
            let e = e.unwrap_or_else(|| panic!("not refused: {needle}"));
            assert!(e.contains(needle), "{e}");
        }
    };
    let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let model = trained(&ck, &cpu, &plan);
    let lora = PeftPlan::new(&PeftConfig::new(Method::Lora), 6).unwrap();
    refused(&model, &lora, None, "another plan");
    // The same method and strata with other LoRA settings: the message names them.
    let mut other_rank = plan.clone();
    if let Some(l) = other_rank.lora.as_mut() {
        l.overrides = vec![spafit::nn::LoraOverride {
            layer: 5,
            target: spafit::nn::LoraTarget::Query,
            rank: 2,
            alpha: 3.0,
        }];
    }
    refused(
        &model,
        &other_rank,
        None,
        "output.dense there and r 8 alpha 16 dropout 0.1 on attention.self.query,\
         attention.self.key,attention.self.value,attention.output.dense,intermediate.dense,\
         output.dense, layer 5 attention.self.query r 2 alpha 3 here",
    );
    refused(
        &model,
        &plan,
        Some(&names(&["a", "b"])),
        "2 label names for a head of 3 outputs",
    );
    refused(&model, &plan, Some(&names(&["a", "a", "b"])), "labels");
    let mut merged = trained(&ck, &cpu, &plan);
    merged.merge_lora(&cpu).unwrap();
    refused(&merged, &plan, None, "merged");
    let mut diverged = trained(&ck, &cpu, &plan);
    let head = &mut diverged.classifier.weight;
    let mut v = cpu.to_f64(&head.value).unwrap();
    v[4] = f64::NAN;
    head.value = cpu.tensor_from_f64(head.value.shape().clone(), &v).unwrap();
    refused(&diverged, &plan, None, "`classifier.weight` holds NaN");
    let mut cut = trained(&ck, &cpu, &plan);
    cut.bert.layers.pop();
    refused(&cut, &plan, None, "5 encoder layers where its config");
    // The error of saving `model` into `at` with `inputs`.
    let refused_save = |at: &std::path::Path, inputs: TrainingInputs| {
        save_adapter(at, &cpu, &model, &plan, &ck.weights, None, inputs)
            .unwrap_err()
            .to_string()
    };
    // A cut of the texts the model cannot take would make the adapter unusable.
    let e = refused_save(
        dir.path(),
        TrainingInputs {
            text_pairs: None,
            max_len: Some(0),
        },
    );
    assert!(e.contains("max_len 0"), "{e}");
    let e = export_peft(
        dir.path(),
        &cpu,
        &model,
        &plan,
        &PeftExportRecord {
            base_model_name_or_path: "x",
            inputs: TrainingInputs {
                max_len: Some(100_000),
                ..TrainingInputs::default()
            },
            ..PeftExportRecord::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("max_len 100000") && e.to_string().contains("512 positions"),
        "{e}"
    );
    // One adapter per folder: not beside a PEFT adapter, which `open_adapter` would then
    // pass over.
    let beside = tempfile::tempdir().unwrap();
    std::fs::write(beside.path().join("adapter_config.json"), "{}").unwrap();
    let e = refused_save(beside.path(), TrainingInputs::default());
    assert!(e.contains("holds a PEFT adapter or a model"), "{e}");
    // No plan applied: every weight trains, which no plan's adapter records.
    let bare = BertClassifier::from_checkpoint(&ck, &cpu, 3, 0).unwrap();
    refused(&bare, &plan, None, "no plan was applied");
    // A model prints as a summary (so a `Result` holding one can be unwrapped and shown).
    let shown = format!("{bare:?} / {model:?}");
    assert!(
        shown.contains("layers: 6")
            && shown.contains("num_labels: 3")
            && shown.contains("method: None")
            && shown.contains("method: Some(Spafit)"),
        "{shown}"
    );
    // A model takes one plan: a trained model's weights are not what another plan's
    // adapter would record.
    let mut again = trained(&ck, &cpu, &plan);
    let e = again
        .apply_plan(&lora, &mut peft_lora_init(&cpu, 0))
        .unwrap_err();
    assert!(e.to_string().contains("already applied"), "{e}");
    refused(&again, &plan, Some(&names(&["a", "b"])), "2 label names");
    // A plan whose application failed part way (here: the adapters' initializer) leaves the
    // model under no plan.
    let mut half = BertClassifier::from_checkpoint(&ck, &cpu, 3, 0).unwrap();
    let mut made = 0;
    let e = half
        .apply_plan(&lora, &mut |name, _| {
            made += 1;
            Err(spafit::Error::invalid(
                "test init",
                format!("refusing `{name}`"),
            ))
        })
        .unwrap_err();
    assert!(e.to_string().contains("refusing") && made == 1, "{e}");
    assert!(half.plan().is_none());
    refused(&half, &plan, None, "no plan was applied");
    refused(&half, &lora, None, "no plan was applied");
    let e = half
        .apply_plan(&lora, &mut peft_lora_init(&cpu, 0))
        .unwrap_err();
    assert!(e.to_string().contains("already applied"), "{e}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "something was written"
    );
    assert!(save(&model, &plan, Some(&names(&["a", "b", "c"]))).is_none());

    // In-memory data is checked like a file: a class id past the classes is named by
    // example before the first step, not by its place in a shuffled batch.
    let kind = TaskKind::Classification {
        labels: names(&["a", "b", "c"]),
    };
    let examples: Vec<Example> = (0..20)
        .map(|i| Example {
            text_a: format!("text number {i}"),
            text_b: None,
            target: Some(Target::Class(if i == 17 { 7 } else { i % 3 })),
        })
        .collect();
    let data = Dataset::from_examples("memory", kind, examples);
    let tok = ck.tokenizer(16).unwrap();
    let mut model = trained(&ck, &cpu, &plan);
    let config = TrainConfig {
        max_steps: Some(1),
        ..Default::default()
    };
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config.clone())
        .fit(&tok, &data, None)
        .expect_err("class 7 of 3");
    assert!(
        e.to_string().contains("memory, example 17: class id 7"),
        "{e}"
    );
    // One class is a regression head's single output, not a classifier.
    let single = Dataset::from_examples(
        "single",
        TaskKind::Classification {
            labels: names(&["only"]),
        },
        vec![Example {
            text_a: "text".into(),
            text_b: None,
            target: Some(Target::Class(0)),
        }],
    );
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config.clone())
        .fit(&tok, &single, None)
        .expect_err("one class");
    assert!(e.to_string().contains("at least two classes"), "{e}");
    let e = Trainer::new(&cpu, &mut model, &lora, &ck.weights, config)
        .fit(&tok, &data, None)
        .expect_err("another plan");
    assert!(e.to_string().contains("another plan"), "{e}");
}

/// An opened adapter's head follows the data's class order by the names it records, in the
/// library as in the CLI: the same classes listed otherwise reorder it (and the names it
/// would save), other classes are refused.
#[test]
fn an_opened_adapter_lines_its_head_up_with_the_data_classes() {
    use spafit::data::TaskKind;
    use spafit::model::ClassAlignment;
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let plan = spafit_plan();
    let model = trained(&ck, &cpu, &plan);
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let dir = saved(&ck, &cpu, &model, &plan, &names(&["a", "b", "c"]));
    let before = logits(&ck, &cpu, &model);
    let kind = |v: &[&str]| TaskKind::Classification { labels: names(v) };

    let mut opened = open_adapter(dir.path(), &ck, &cpu).unwrap();
    let done = opened
        .align_classes(&cpu, &kind(&["c", "a", "b"]), dir.path())
        .unwrap();
    assert_eq!(
        done,
        ClassAlignment::Reordered {
            head_classes: names(&["a", "b", "c"])
        }
    );
    assert_eq!(opened.labels, Some(names(&["c", "a", "b"])));
    let after = logits(&ck, &cpu, &opened.model);
    for row in 0..2 {
        for (j, &i) in [2, 0, 1].iter().enumerate() {
            assert_eq!(after[row * 3 + j].to_bits(), before[row * 3 + i].to_bits());
        }
    }

    let mut opened = open_adapter(dir.path(), &ck, &cpu).unwrap();
    assert_eq!(
        opened
            .align_classes(&cpu, &kind(&["a", "b", "c"]), dir.path())
            .unwrap(),
        ClassAlignment::SameOrder
    );
    let e = opened
        .align_classes(&cpu, &kind(&["x", "y", "z"]), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trained for labels") && e.contains("\"x\""),
        "{e}"
    );
    assert!(opened
        .align_classes(&cpu, &TaskKind::Regression, dir.path())
        .is_err());
}

/// What a serving program shares between threads (the README says so): a model, its
/// backend, its tokenizer and an opened adapter, by reference or moved.
#[test]
fn what_serving_shares_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<CpuBackend>();
    shared::<spafit::backend::cuda::CudaBackend>();
    shared::<BertClassifier<CpuBackend>>();
    shared::<BertClassifier<spafit::backend::cuda::CudaBackend>>();
    shared::<spafit::adapter::OpenedAdapter<CpuBackend>>();
    shared::<spafit::text::TextTokenizer>();
    shared::<Checkpoint>();
    shared::<PeftPlan>();
    shared::<Error>();
}

/// Base weights other than those the model was loaded from — another shape (a longer
/// position table) or the same shapes with one bias changed — are refused by the save, the
/// PEFT export and the trainer, before anything is written: the adapter would record a base
/// it was not trained on and load onto neither. The same tensors saved again in another
/// order pass. An empty output path (the working directory by another name) is refused by
/// all three, and so is inference on a backend of another float dtype.
#[test]
fn other_base_weights_empty_paths_and_other_dtypes_are_refused() {
    use spafit::train::{TrainConfig, Trainer};
    let tmp = tempfile::tempdir().unwrap();
    let ck = common::tiny_bert::write_checkpoint(&tmp.path().join("base"));
    let longer = common::tiny_bert::write_checkpoint_with_positions(&tmp.path().join("long"), 80);
    // The base's tensors written again, reversed, with `edit` applied.
    let rewritten = |name: &str, edit: &dyn Fn(&str, &mut Vec<f64>)| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(ck.dir().join(f), dir.join(f)).unwrap();
        }
        let mut stored: Vec<common::family_fixture::Stored> = ck
            .weights
            .names()
            .iter()
            .rev()
            .map(|n| {
                let shape = ck.weights.shape(n).unwrap();
                let mut v = ck.weights.read_f64(n, &shape.clone().into()).unwrap();
                edit(n, &mut v);
                (n.clone(), safetensors::Dtype::F64, shape, v)
            })
            .collect();
        stored.sort_by(|a, b| b.0.cmp(&a.0));
        common::family_fixture::write_tensors(&dir.join("model.safetensors"), &stored);
        Checkpoint::open(&dir).unwrap()
    };
    let nudged = rewritten("nudged", &|n, v| {
        if n.ends_with("layer.1.output.LayerNorm.bias") {
            v[0] += 1e-3;
        }
    });
    let resaved = rewritten("resaved", &|_, _| {});
    let cpu = CpuBackend::f32();
    let plan = PeftPlan::new(&PeftConfig::new(Method::Lora), 2).unwrap();
    let mut model = BertClassifier::from_checkpoint(&ck, &cpu, 2, 0).unwrap();
    model.apply_plan(&plan, &mut |_, s| cpu.zeros(s)).unwrap();
    let inputs = TrainingInputs {
        text_pairs: Some(false),
        max_len: None,
    };
    let out = tmp.path().join("out");
    for other in [&longer, &nudged] {
        let e = save_adapter(&out, &cpu, &model, &plan, &other.weights, None, inputs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&other.weights.path().display().to_string())
                && e.contains("not the weights the model was loaded from"),
            "{e}"
        );
        let record = PeftExportRecord {
            base_model_name_or_path: "x",
            labels: None,
            inputs,
            run_dir: None,
            base: Some(&other.weights),
        };
        let e = export_peft(&out, &cpu, &model, &plan, &record)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not the weights the model was loaded from"),
            "{e}"
        );
        let examples = (0..4)
            .map(|i| Example {
                text_a: format!("text {i}"),
                text_b: None,
                target: Some(spafit::data::Target::Class(i % 2)),
            })
            .collect();
        let kind = TaskKind::Classification {
            labels: vec!["a".into(), "b".into()],
        };
        let data = Dataset::from_examples("in memory", kind, examples);
        let config = TrainConfig {
            output_dir: Some(out.clone()),
            ..TrainConfig::default()
        };
        let e = Trainer::new(&cpu, &mut model, &plan, &other.weights, config)
            .fit(&ck.tokenizer(16).unwrap(), &data, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not the weights the model was loaded from"),
            "{e}"
        );
        assert!(
            !out.exists(),
            "written for {}",
            other.weights.path().display()
        );
    }
    save_adapter(&out, &cpu, &model, &plan, &resaved.weights, None, inputs).unwrap();
    // An empty path would be the working directory by another name: refused by all three.
    let empty = std::path::Path::new("");
    let e = save_adapter(empty, &cpu, &model, &plan, &ck.weights, None, inputs).unwrap_err();
    assert!(e.to_string().contains("the path is empty"), "{e}");
    let record = PeftExportRecord {
        base_model_name_or_path: "x",
        labels: None,
        inputs,
        run_dir: None,
        base: Some(&ck.weights),
    };
    let e = export_peft(empty, &cpu, &model, &plan, &record).unwrap_err();
    assert!(e.to_string().contains("the path is empty"), "{e}");
    let config = TrainConfig {
        output_dir: Some(empty.to_path_buf()),
        ..TrainConfig::default()
    };
    let data = Dataset::from_examples(
        "in memory",
        TaskKind::Classification {
            labels: vec!["a".into(), "b".into()],
        },
        (0..2)
            .map(|i| Example {
                text_a: format!("text {i}"),
                text_b: None,
                target: Some(spafit::data::Target::Class(i)),
            })
            .collect(),
    );
    let e = Trainer::new(&cpu, &mut model, &plan, &ck.weights, config)
        .fit(&ck.tokenizer(16).unwrap(), &data, None)
        .unwrap_err();
    assert!(e.to_string().contains("the path is empty"), "{e}");
    // Inference on a backend of another float dtype is refused, as training is, rather than
    // run in the model's own (f32 logits where f64 ones were asked for).
    let f64 = CpuBackend::f64();
    let tok = ck.tokenizer(16).unwrap();
    let enc = tok.encode_batch(&[TextInput::Single("a text")]).unwrap();
    let input = ModelInput::new(&f64, &enc).unwrap();
    let e = model
        .forward(&mut Tape::new(f64), &input, &mut DropoutPlan::eval())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("is f32 but cpu-f64 computes in f64: build the model on the backend"),
        "{e}"
    );
}
