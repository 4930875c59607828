//! Adapters merged into fine-tuned checkpoints of their own: the merged checkpoint, read as a
//! fine-tuned `BertForSequenceClassification` with no adapter, gives the logits PEFT gave
//! for adapters PEFT wrote (float64, ≤ 1e-9), and the adapter's own logits under every
//! method; its config names the head's classes as transformers reads them; what cannot be
//! stored is refused, and a refused merge leaves nothing behind.

use crate::common;

use std::path::{Path, PathBuf};

use spafit::adapter::{open_adapter, save_merged, MergedDType};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::data::TaskKind;
use spafit::model::BertClassifier;
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};

fn checkpoint() -> Checkpoint {
    Checkpoint::open(common::minilm_dir()).unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Logits of the checkpoint in `dir` read as a fine-tuned one (its own head, no adapter).
fn merged_logits(dir: &Path, texts: &[&str], max_len: usize) -> Vec<f64> {
    let cpu = CpuBackend::f64();
    let merged = Checkpoint::open(dir).unwrap();
    let model = BertClassifier::from_fine_tuned(&merged, &cpu).unwrap();
    common::logits(&merged, &cpu, &model, texts, max_len)
}

fn config_of(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// Every file and folder in `dir`, so a test can see that a refused merge left nothing.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn adapters_written_by_peft_merge_to_peft_logits() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases = 0;
    for set in ["peft-adapters", "peft-adapters-wrapped"] {
        let reference = common::PeftReference::read(&root.join(set));
        let (texts, max_len) = (reference.texts(), reference.max_len);
        for (name, case) in &reference.cases {
            let want = common::PeftReference::logits(case);
            // The worst error each storage may have: f64 is the merge itself; f32 rounds
            // every weight once; bf16 keeps 8 bits of each.
            for (dtype, tolerance) in [
                (MergedDType::F64, 1e-14),
                (MergedDType::F32, 5e-8),
                (MergedDType::BF16, 2e-2),
            ] {
                let opened = open_adapter(&root.join(set).join(name), &ck, &cpu).unwrap();
                let kind = opened.head().default_kind();
                let out = tmp.path().join(format!("{set}-{name}-{dtype:?}"));
                let merged =
                    save_merged(&out, &cpu, opened.model, &kind, &ck, dtype, None).unwrap();
                // The whole BertForSequenceClassification: the base's weights (under
                // `bert.`; not the `position_ids` buffer old transformers saved) and the head.
                let mut names =
                    spafit::checkpoint::WeightsFile::open(&out.join("model.safetensors"))
                        .unwrap()
                        .names()
                        .to_vec();
                names.sort();
                let mut expected: Vec<String> = ck
                    .weights
                    .names()
                    .iter()
                    .filter(|n| !n.ends_with("position_ids"))
                    .map(|n| format!("bert.{}", n.trim_start_matches("bert.")))
                    .chain(["classifier.bias".into(), "classifier.weight".into()])
                    .collect();
                expected.sort();
                assert_eq!(names, expected, "{name}");
                assert_eq!(merged.tensors, names.len());
                let err = max_abs_diff(&merged_logits(&out, &texts, max_len), &want);
                println!("MERGED {set}/{name} {dtype:?}: max |logit - PEFT f64| = {err:.2e}");
                assert!(err <= tolerance, "{set}/{name} {dtype:?}: {err:e}");
                let config = config_of(&out);
                let outputs = case["num_labels"].as_u64().unwrap();
                assert_eq!(
                    config["id2label"].as_object().unwrap().len() as u64,
                    outputs
                );
                let problem = match outputs {
                    1 => "regression",
                    _ => "single_label_classification",
                };
                assert_eq!(config["problem_type"], problem, "{name}");
                assert_eq!(
                    config["architectures"],
                    serde_json::json!(["BertForSequenceClassification"])
                );
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 12);
}

/// Under every method the merged checkpoint computes what the adapter computes (in f64: the
/// merge's own rounding only), with the classes it was given in its config, both ways.
#[test]
fn every_method_merges_to_the_adapters_logits() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let tmp = tempfile::tempdir().unwrap();
    let texts = [
        "a gorgeous, witty, seductive movie.",
        "the plot is nothing but boilerplate clichés from start to finish,",
        "it's a charming and often affecting journey.",
    ];
    let mut spafit = PeftConfig::new(Method::Spafit);
    spafit.n1 = Boundary::Layer(2);
    spafit.n2 = Boundary::Layer(4);
    spafit.train_pooler = true;
    let mut lora_all = PeftConfig::new(Method::Lora);
    lora_all.lora.targets = spafit::nn::LoraTarget::ALL.to_vec();
    lora_all.lora.rank = 3;
    lora_all.lora.alpha = 7.0;
    for (name, config) in [
        ("full", PeftConfig::new(Method::Full)),
        ("bitfit", PeftConfig::new(Method::BitFit)),
        ("lora", PeftConfig::new(Method::Lora)),
        ("lora all maps", lora_all),
        ("spafit", spafit),
    ] {
        let plan = PeftPlan::new(&config, 6).unwrap();
        let labels: Vec<String> = ["entailment", "neutral", "contradiction"]
            .map(String::from)
            .to_vec();
        let model = common::trained(&ck, &cpu, &plan, 3);
        let want = common::logits(&ck, &cpu, &model, &texts, 32);
        let out = tmp.path().join(name.replace(' ', "-"));
        let kind = TaskKind::Classification {
            labels: labels.clone(),
        };
        save_merged(
            &out,
            &cpu,
            model.clone(),
            &kind,
            &ck,
            MergedDType::F64,
            Some(32),
        )
        .unwrap();
        assert_eq!(
            spafit::adapter::merged_max_len(&out).unwrap(),
            Some(Some(32))
        );
        let err = max_abs_diff(&merged_logits(&out, &texts, 32), &want);
        println!("MERGED {name}: max |logit - adapter's| = {err:.2e}");
        assert!(err <= 1e-12, "{name}: {err:e}");
        let config = config_of(&out);
        for (i, label) in labels.iter().enumerate() {
            assert_eq!(config["id2label"][i.to_string()], label.as_str());
            assert_eq!(config["label2id"][label], i);
        }
        assert_eq!(config["dtype"], "float64");
        // The base's tokenizer goes along, so the folder is a checkpoint on its own.
        assert!(out.join("tokenizer.json").is_file() && out.join("vocab.txt").is_file());
    }
}

/// What a merge cannot do is refused before anything is written: a folder that holds
/// files, a path that is a file, values beyond float16, classes that are not the head's.
#[test]
fn impossible_merges_are_refused_and_leave_nothing() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let tmp = tempfile::tempdir().unwrap();
    let plan = PeftPlan::new(&PeftConfig::new(Method::Lora), 6).unwrap();
    let model = common::trained(&ck, &cpu, &plan, 2);
    let kind = TaskKind::Classification {
        labels: vec!["neg".into(), "pos".into()],
    };
    let merge = |out: &Path, model: BertClassifier<CpuBackend>, kind: &TaskKind, dtype| {
        save_merged(out, &cpu, model, kind, &ck, dtype, None)
            .unwrap_err()
            .to_string()
    };
    let occupied = tmp.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "mine").unwrap();
    let e = merge(&occupied, model.clone(), &kind, MergedDType::F32);
    assert!(e.contains("is not empty"), "{e}");
    let file = tmp.path().join("file");
    std::fs::write(&file, "mine").unwrap();
    let e = merge(&file, model.clone(), &kind, MergedDType::F32);
    assert!(e.contains("is a file"), "{e}");
    let e = merge(&file.join("sub"), model.clone(), &kind, MergedDType::F32);
    assert!(
        e.contains(&format!("lies under {}, which is a file", file.display())),
        "{e}"
    );
    let three = TaskKind::Classification {
        labels: vec!["a".into(), "b".into(), "c".into()],
    };
    let e = merge(
        &tmp.path().join("three"),
        model.clone(),
        &three,
        MergedDType::F32,
    );
    assert!(e.contains("2 outputs but 3 classes"), "{e}");
    // A weight beyond float16's range, named.
    let mut large = model.clone();
    let head = large
        .params_mut()
        .into_iter()
        .find(|p| p.name == "classifier.weight")
        .unwrap();
    let mut values = cpu.to_f64(&head.value).unwrap();
    values[5] = 1e6;
    head.value = cpu
        .tensor_from_f64(head.value.shape().clone(), &values)
        .unwrap();
    let e = merge(
        &tmp.path().join("f16"),
        large.clone(),
        &kind,
        MergedDType::F16,
    );
    assert!(
        e.contains("`classifier.weight`") && e.contains("float16"),
        "{e}"
    );
    for no_name in ["new/.", "new/.//", "new/..", "/"] {
        let e = merge(
            &tmp.path().join(no_name),
            model.clone(),
            &kind,
            MergedDType::F32,
        );
        assert!(
            e.contains("names no folder of the merge's own"),
            "{no_name}: {e}"
        );
    }
    // A place no folder can be made in (root included) is named as the output, with why.
    let e = merge(
        Path::new("/proc/self/merged"),
        model.clone(),
        &kind,
        MergedDType::F32,
    );
    assert!(
        e.starts_with("/proc/self/merged: cannot write the merge beside it, in /proc/self"),
        "{e}"
    );
    // Another encoder's checkpoint would give the merge its config and tokenizer.
    let roberta = Checkpoint::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta/model"),
    )
    .unwrap();
    let e = save_merged(
        &tmp.path().join("elsewhere"),
        &cpu,
        model.clone(),
        &kind,
        &roberta,
        MergedDType::F32,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the model is not an encoder of") && e.contains("family: Bert vs Roberta"),
        "{e}"
    );
    // A cut of the training texts the model's positions cannot hold.
    for max_len in [0, 513, 1 << 40] {
        let e = save_merged(
            &tmp.path().join("cut"),
            &cpu,
            model.clone(),
            &kind,
            &ck,
            MergedDType::F32,
            Some(max_len),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!(
                "max_len {max_len}: the training texts' cut is between 1"
            )),
            "{e}"
        );
    }
    assert_eq!(entries(tmp.path()), ["file", "occupied"]);
    assert_eq!(entries(&occupied), ["notes.txt"]);
    // What a merge no longer writing left goes; a merge still writing holds its folder's
    // lock, whatever its process id says, and its folder stays.
    let (abandoned, live) = (
        tmp.path().join(".empty.merging-12"),
        tmp.path().join(".empty.merging-34"),
    );
    std::fs::create_dir(&abandoned).unwrap();
    std::fs::create_dir(&live).unwrap();
    let live_lock = std::fs::File::open(&live).unwrap();
    live_lock.lock().unwrap();
    // bf16 has f32's range; an empty folder takes the merge, keeping its permissions (0750:
    // neither the umask's 0755 nor a 077 umask's 0700).
    use std::os::unix::fs::PermissionsExt;
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o750)).unwrap();
    save_merged(&empty, &cpu, large, &kind, &ck, MergedDType::BF16, None).unwrap();
    let mode = std::fs::metadata(&empty).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o750, "{mode:o}");
    assert!(!abandoned.exists() && live.is_dir());
    drop(live_lock);
    std::fs::remove_dir(&live).unwrap();
    assert_eq!(
        entries(&empty),
        [
            "config.json",
            "model.safetensors",
            "spafit_merge.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt"
        ]
    );
    assert_eq!(entries(tmp.path()), ["empty", "file", "occupied"]);
    // A link is followed, as a shell's `>` follows one: the merge lands where it points.
    let target = tmp.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    save_merged(
        &link,
        &cpu,
        model.clone(),
        &kind,
        &ck,
        MergedDType::F32,
        None,
    )
    .unwrap();
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(target.join("model.safetensors").is_file());
    let e = merge(&link, model, &kind, MergedDType::F32);
    assert!(e.contains("is not empty"), "{e}");
    assert_eq!(
        entries(tmp.path()),
        ["empty", "file", "link", "occupied", "target"]
    );
}
