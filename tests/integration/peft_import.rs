//! PEFT adapters in both directions: adapters that Python PEFT itself wrote give PEFT's float64
//! logits; spafit's export holds exactly the model's tensors (names, shapes, values) and
//! imports back to bitwise the same logits; what cannot be represented is refused, naming the
//! field or tensor.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spafit::adapter::{export_peft, import_peft, open_adapter, AdapterFormat, PeftExportRecord};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::nn::{LoraOverride, LoraSite, LoraTarget, Stratum};
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};
use spafit::Error;

fn checkpoint() -> Checkpoint {
    Checkpoint::open(common::minilm_dir()).unwrap()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft-adapters")
}

/// Adapters PEFT saved with its `modules_to_save` wrappers and exclusions (made by
/// `tests/fixtures/peft-adapters-wrapped/make_peft_adapters_wrapped.py`).
fn wrapped_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft-adapters-wrapped")
}

#[test]
fn adapters_written_by_peft_give_peft_logits() {
    check_peft_written_set(&fixtures(), 4);
}

#[test]
fn adapters_with_peft_wrappers_and_saved_modules_give_peft_logits() {
    check_peft_written_set(&wrapped_fixtures(), 8);
}

/// Every case of a PEFT-written fixture set loads to PEFT's float64 logits, every stored
/// tensor is either loaded or one PEFT ignores too, and the continued-training plan is the
/// one expected for the case.
fn check_peft_written_set(fixtures: &Path, cases_expected: usize) {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let reference = common::PeftReference::read(fixtures);
    let (texts, max_len, cases) = (reference.texts(), reference.max_len, &reference.cases);
    assert_eq!(cases.len(), cases_expected);
    for (name, case) in cases {
        let dir = fixtures.join(name);
        let opened = open_adapter(&dir, &ck, &cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(opened.format, AdapterFormat::Peft);
        // Training continues from it unless it sets tensors no plan trains.
        match opened.check_trainable(&dir) {
            Ok(()) => assert!(opened.kept_frozen.is_empty(), "{name}"),
            Err(e) => assert!(
                !opened.kept_frozen.is_empty()
                    && e.to_string().contains("that no spafit plan trains"),
                "{name}: {e}"
            ),
        }
        let labels = case["num_labels"].as_u64().unwrap() as usize;
        assert_eq!(opened.model.num_labels(), labels, "{name}");
        let want = common::PeftReference::logits(case);
        let got = common::logits(&ck, &cpu, &opened.model, &texts, max_len);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "PEFT-IMPORT {name}: max |logit - PEFT f64| = {err:.2e} ({} logits)",
            want.len()
        );
        assert_eq!(got.len(), want.len());
        assert!(err <= 1e-9, "{name}: {err:.3e}");
        // Every tensor of the file landed somewhere or is one PEFT does not use either (a
        // silently skipped tensor would change the logits above only if it mattered; count
        // them too).
        let (_, import) = import_peft(&dir, &ck, &cpu).unwrap();
        // In bf16 the base's frozen layers are stored in bf16 as they load: what the file
        // holds is still judged against the checkpoint's values, not their rounding.
        let (_, in_bf16) = import_peft(&dir, &ck, &CpuBackend::bf16()).unwrap();
        assert_eq!(
            (&in_bf16.loaded, &in_bf16.kept_frozen, &in_bf16.ignored),
            (&import.loaded, &import.kept_frozen, &import.ignored),
            "{name}"
        );
        let stored = spafit::checkpoint::WeightsFile::open(&dir.join("adapter_model.safetensors"))
            .unwrap()
            .names()
            .len();
        assert_eq!(import.loaded.len() + import.ignored.len(), stored, "{name}");
        assert!(
            import
                .ignored
                .iter()
                .all(|n| n.contains(".original_module.") || n.contains(".modules_to_save.")),
            "{name}: {:?}",
            import.ignored
        );
        // The plan spafit continues training with.
        let plan = &opened.plan;
        let lora = plan.lora.as_ref().unwrap();
        if name != "rank_and_alpha_patterns" {
            assert!(lora.overrides.is_empty(), "{name}: {:?}", lora.overrides);
        }
        if name != "layer_dependent_targets" {
            assert!(lora.unadapted.is_empty(), "{name}: {:?}", lora.unadapted);
        }
        match name.as_str() {
            "lora_qv" => {
                assert_eq!(plan.method, Method::Lora);
                assert_eq!(plan.strata, vec![Stratum::LoraOnly; 6]);
                assert_eq!((lora.rank, lora.alpha), (8, 16.0));
                assert_eq!(lora.targets, [LoraTarget::Query, LoraTarget::Value]);
                assert!(opened.notes.is_empty(), "{:?}", opened.notes);
            }
            "spafit_top2" => {
                assert_eq!(plan.method, Method::Spafit);
                assert_eq!(plan.boundaries, Some((2, 4)));
                assert_eq!(lora.targets, LoraTarget::ALL);
                assert!(opened.notes.is_empty(), "{:?}", opened.notes);
            }
            "regex_lora_only_bias" => {
                let mut strata = vec![Stratum::Frozen; 6];
                strata[1] = Stratum::LoraAndBias;
                strata[3] = Stratum::LoraAndBias;
                assert_eq!(plan.strata, strata);
                assert_eq!(lora.targets, [LoraTarget::Query, LoraTarget::Key]);
                // bias "lora_only" stores the adapted maps' biases; spafit would also train the
                // layers' other biases, and says so.
                assert!(
                    opened.notes.len() == 1
                        && opened.notes[0].contains("bert.encoder.layer.1.output.LayerNorm.bias"),
                    "{:?}",
                    opened.notes
                );
            }
            "lora_regression" => {
                assert_eq!(lora.alpha, 32.0);
                assert_eq!(lora.targets.len(), 3);
            }
            "bias_all_pooler" => {
                // The wrappers' copies and the frozen originals of the classifier and the
                // pooler: four tensors PEFT does not use either.
                assert_eq!(import.ignored.len(), 4, "{:?}", import.ignored);
                // No spafit plan trains the embeddings' LayerNorm bias alone.
                assert_eq!(import.kept_frozen, ["bert.embeddings.LayerNorm.bias"]);
                assert_eq!(plan.strata, vec![Stratum::LoraAndBias; 6]);
                assert!(plan.train_pooler);
                assert_eq!(lora.targets, [LoraTarget::Query, LoraTarget::Value]);
            }
            "dense_pooler_saved" => {
                // `dense` would also select the pooler, but modules_to_save keeps it whole.
                assert!(import
                    .loaded
                    .iter()
                    .any(|n| n == "bert.pooler.dense.weight"));
                assert!(plan.train_pooler);
                assert_eq!(
                    lora.targets,
                    [
                        LoraTarget::AttentionOutput,
                        LoraTarget::Intermediate,
                        LoraTarget::Output
                    ]
                );
            }
            "key_saved_not_adapted" => {
                assert_eq!(lora.targets, [LoraTarget::Query, LoraTarget::Value]);
                assert!(import
                    .kept_frozen
                    .iter()
                    .any(|n| n == "bert.encoder.layer.0.attention.self.key.weight"));
                assert!(import
                    .loaded
                    .iter()
                    .any(|n| n == "bert.encoder.layer.3.attention.self.key.weight"));
            }
            "empty_layers_list" => {
                assert_eq!(plan.strata, vec![Stratum::LoraOnly; 6]);
            }
            "rank_stabilized" => {
                // lora_alpha 2 over √4: spafit's alpha / r with alpha 2·√4.
                assert_eq!((lora.rank, lora.alpha), (4, 4.0));
                assert!(
                    opened.notes.len() == 1 && opened.notes[0].contains("use_rslora"),
                    "{:?}",
                    opened.notes
                );
            }
            "rank_and_alpha_patterns" => {
                // r 2, alpha 4; the first `rank_pattern` key matching a name's end gives
                // layer 1's query rank 3 and every other query 1, layer 4's feed-forward
                // output 5; `alpha_pattern` gives every attention output alpha 7 and layer
                // 2's value 1.5.
                assert_eq!((lora.rank, lora.alpha), (2, 4.0));
                let own = |layer, target, rank, alpha| LoraOverride {
                    layer,
                    target,
                    rank,
                    alpha,
                };
                let mut want = Vec::new();
                for layer in 0..6 {
                    want.push(own(
                        layer,
                        LoraTarget::Query,
                        if layer == 1 { 3 } else { 1 },
                        4.0,
                    ));
                    if layer == 2 {
                        want.push(own(layer, LoraTarget::Value, 2, 1.5));
                    }
                    want.push(own(layer, LoraTarget::AttentionOutput, 2, 7.0));
                    if layer == 4 {
                        want.push(own(layer, LoraTarget::Output, 5, 4.0));
                    }
                }
                assert_eq!(lora.overrides, want);
                assert_eq!(plan.strata, vec![Stratum::LoraOnly; 6]);
            }
            "layer_dependent_targets" => {
                // Query and value in layers 0-2, query and the feed-forward output in 3-5:
                // the union, each layer leaving out what it does not adapt.
                assert_eq!(
                    lora.targets,
                    [LoraTarget::Query, LoraTarget::Value, LoraTarget::Output]
                );
                let site = |layer, target| LoraSite { layer, target };
                let mut want: Vec<LoraSite> = (0..3).map(|l| site(l, LoraTarget::Output)).collect();
                want.extend((3..6).map(|l| site(l, LoraTarget::Value)));
                assert_eq!(lora.unadapted, want);
                assert_eq!(plan.strata, vec![Stratum::LoraOnly; 6]);
                let layers = &opened.model.bert.layers;
                assert!(layers[1].output.lora.is_none() && layers[1].value.lora.is_some());
                assert!(layers[4].output.lora.is_some() && layers[4].value.lora.is_none());
            }
            "dora" => {
                // DoRA adapters on query and value of every layer, their magnitudes trainable.
                assert!(plan.lora.as_ref().unwrap().dora);
                let magnitudes: Vec<String> = opened
                    .model
                    .trainable_names()
                    .into_iter()
                    .filter(|n| n.ends_with("lora_magnitude_vector"))
                    .collect();
                assert_eq!(magnitudes.len(), 12, "{magnitudes:?}");
                assert!(magnitudes.contains(
                    &"bert.encoder.layer.5.attention.self.value.lora_magnitude_vector".to_string()
                ));
                opened.check_trainable(&dir).unwrap();
            }
            other => panic!("unknown case {other}"),
        }
    }
}

fn plans() -> Vec<(&'static str, PeftPlan)> {
    let lora = PeftPlan::new(&PeftConfig::new(Method::Lora), 6).unwrap();
    let mut some_layers = PeftConfig::new(Method::Lora);
    some_layers.lora_layers = Some(vec![0, 3, 5]);
    some_layers.lora.targets = LoraTarget::ALL.to_vec();
    some_layers.lora.rank = 4;
    some_layers.lora.alpha = 12.0;
    let mut spafit = PeftConfig::new(Method::Spafit);
    spafit.n1 = Boundary::Layer(2);
    spafit.n2 = Boundary::Layer(4);
    spafit.train_pooler = true;
    let mut norms_and_embeddings = PeftConfig::new(Method::Spafit);
    norms_and_embeddings.n1 = Boundary::Layer(3);
    norms_and_embeddings.n2 = Boundary::Layer(5);
    norms_and_embeddings.train_layer_norm_weights = true;
    norms_and_embeddings.train_embeddings = true;
    // LoRA trains no biases: its LayerNorms, saved whole, carry their frozen bias along.
    let mut lora_norms = PeftConfig::new(Method::Lora);
    lora_norms.train_layer_norm_weights = true;
    let mut spafit_all_top = PeftConfig::new(Method::Spafit);
    spafit_all_top.n1 = Boundary::Layer(0);
    spafit_all_top.n2 = Boundary::Layer(1);
    spafit_all_top.lora.targets = vec![LoraTarget::Output, LoraTarget::AttentionOutput];
    vec![
        ("lora q,v", lora),
        (
            "lora layers 0,3,5 all maps",
            PeftPlan::new(&some_layers, 6).unwrap(),
        ),
        ("spafit 2/4 + pooler", PeftPlan::new(&spafit, 6).unwrap()),
        (
            "spafit 3/5 + LayerNorms + embeddings",
            PeftPlan::new(&norms_and_embeddings, 6).unwrap(),
        ),
        (
            "spafit 0/1 output maps",
            PeftPlan::new(&spafit_all_top, 6).unwrap(),
        ),
        (
            "lora q,v + LayerNorms",
            PeftPlan::new(&lora_norms, 6).unwrap(),
        ),
    ]
}

/// Export → import gives bitwise the same logits and the same plan, in f64 and f32.
/// Exports `model` under `plan` as a PEFT adapter into `dir`; its `adapter_config.json`.
fn exported_config<B: Backend>(
    dir: &Path,
    backend: &B,
    model: &spafit::model::BertClassifier<B>,
    plan: &PeftPlan,
) -> serde_json::Value {
    export_peft(
        dir,
        backend,
        model,
        plan,
        &PeftExportRecord {
            base_model_name_or_path: "all-MiniLM-L6-v2",
            ..PeftExportRecord::default()
        },
    )
    .unwrap();
    serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
        .unwrap()
}

/// `a` and `b` give the same logits on `texts`, bit for bit.
fn same_logits_bitwise(
    ck: &Checkpoint,
    cpu: &CpuBackend,
    a: &spafit::model::BertClassifier<CpuBackend>,
    b: &spafit::model::BertClassifier<CpuBackend>,
    texts: &[&str],
) {
    let (x, y) = (
        common::logits(ck, cpu, a, texts, 32),
        common::logits(ck, cpu, b, texts, 32),
    );
    assert!(
        x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
        "{x:?} vs {y:?}"
    );
}

/// A rank-stabilized adapter's export declares plain LoRA (`use_rslora` false) with the alpha
/// that gives the same scale, `lora_alpha · √r`, and imports back to bitwise its logits.
#[test]
fn a_rank_stabilized_adapter_exports_as_plain_lora_of_the_same_scale() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let texts = ["a gorgeous, witty movie", "dull"];
    let opened = open_adapter(&wrapped_fixtures().join("rank_stabilized"), &ck, &cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = exported_config(dir.path(), &cpu, &opened.model, &opened.plan);
    // The fixture's lora_alpha 2 over √4 is alpha 4 over 4.
    assert_eq!(
        (&config["use_rslora"], &config["r"], &config["lora_alpha"]),
        (
            &serde_json::json!(false),
            &serde_json::json!(4),
            &serde_json::json!(4.0)
        ),
        "{config}"
    );
    let (back, import) = import_peft(dir.path(), &ck, &cpu).unwrap();
    assert!(import.notes.is_empty(), "{:?}", import.notes);
    same_logits_bitwise(&ck, &cpu, &opened.model, &back, &texts);
}

/// An adapter of per-module ranks and alphas exports them as `rank_pattern` and
/// `alpha_pattern` keys that each name one module whole (dots escaped, so `layer.1` is not
/// `layer.11`'s end), only where they differ from `r` and `lora_alpha`, and imports back to
/// the same plan and bitwise its logits.
#[test]
fn per_module_ranks_and_alphas_export_as_patterns() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let texts = ["a gorgeous, witty movie", "dull"];
    let opened = open_adapter(
        &wrapped_fixtures().join("rank_and_alpha_patterns"),
        &ck,
        &cpu,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = exported_config(dir.path(), &cpu, &opened.model, &opened.plan);
    let key = |layer: usize, module: &str| {
        format!("bert.encoder.layer.{layer}.{module}").replace('.', "\\.")
    };
    let mut ranks = serde_json::Map::new();
    let mut alphas = serde_json::Map::new();
    for layer in 0..6 {
        ranks.insert(
            key(layer, "attention.self.query"),
            serde_json::json!(if layer == 1 { 3 } else { 1 }),
        );
        alphas.insert(key(layer, "attention.output.dense"), serde_json::json!(7.0));
    }
    ranks.insert(key(4, "output.dense"), serde_json::json!(5));
    alphas.insert(key(2, "attention.self.value"), serde_json::json!(1.5));
    assert_eq!(
        (&config["r"], &config["lora_alpha"]),
        (&serde_json::json!(2), &serde_json::json!(4.0))
    );
    assert_eq!(config["rank_pattern"], serde_json::Value::Object(ranks));
    assert_eq!(config["alpha_pattern"], serde_json::Value::Object(alphas));
    let (back, _) = import_peft(dir.path(), &ck, &cpu).unwrap();
    let reopened = open_adapter(dir.path(), &ck, &cpu).unwrap();
    assert_eq!(reopened.plan.lora, opened.plan.lora);
    same_logits_bitwise(&ck, &cpu, &opened.model, &back, &texts);

    // Saved as spafit's own adapter, the overrides make it version 3, which an older spafit
    // (reading 1 and 2) refuses rather than computing with the config's rank and alpha.
    let (own, mut manifest) = saved_as_version(&ck, &cpu, &opened, &texts, 3);
    let manifest_path = own.path().join("adapter.json");
    manifest["version"] = 1.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let e = spafit::adapter::load_adapter(own.path(), &ck, &cpu)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`version` 1 with `multi_label` false, some `lora.overrides`"),
        "{e}"
    );
}

/// Other maps in other layers export as one `target_modules` alternative per group of layers
/// adapting the same maps (PEFT matches the whole pattern against each module's name), and
/// import back to the same plan and bitwise the same logits; saved as spafit's own adapter it
/// is version 3, as adapters of their own rank are.
#[test]
fn layer_dependent_targets_export_as_one_alternative_per_group() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let texts = ["a gorgeous, witty movie", "dull"];
    let opened = open_adapter(
        &wrapped_fixtures().join("layer_dependent_targets"),
        &ck,
        &cpu,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = exported_config(dir.path(), &cpu, &opened.model, &opened.plan);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(
            r"bert\.encoder\.layer\.(0|1|2)\.(attention\.self\.query|attention\.self\.value)|bert\.encoder\.layer\.(3|4|5)\.(attention\.self\.query|output\.dense)"
        )
    );
    let (back, _) = import_peft(dir.path(), &ck, &cpu).unwrap();
    let reopened = open_adapter(dir.path(), &ck, &cpu).unwrap();
    assert_eq!(reopened.plan, opened.plan);
    same_logits_bitwise(&ck, &cpu, &opened.model, &back, &texts);
    saved_as_version(&ck, &cpu, &opened, &texts, 3);
}

/// `opened` saved as spafit's own adapter: its `adapter.json` says version 3 (adapters that
/// vary by site), and it loads back to bitwise the same logits. The folder and the manifest.
fn saved_as_version(
    ck: &Checkpoint,
    cpu: &CpuBackend,
    opened: &spafit::adapter::OpenedAdapter<CpuBackend>,
    texts: &[&str],
    version: u32,
) -> (tempfile::TempDir, serde_json::Value) {
    let own = tempfile::tempdir().unwrap();
    spafit::adapter::save_adapter(
        own.path(),
        cpu,
        &opened.model,
        &opened.plan,
        &ck.weights,
        None,
        spafit::adapter::TrainingInputs::default(),
    )
    .unwrap();
    let text = std::fs::read_to_string(own.path().join("adapter.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(manifest["version"], version);
    let (loaded, _) = spafit::adapter::load_adapter(own.path(), ck, cpu).unwrap();
    same_logits_bitwise(ck, cpu, &opened.model, &loaded, texts);
    (own, manifest)
}

/// A DoRA adapter's magnitudes are the file's, and merged, each adapted row's norm is the
/// file's magnitude for it (and the maps it does not adapt are untouched); magnitudes without
/// `use_dora`, a missing one, one of another length or not finite are refused, naming the
/// tensor.
#[test]
fn dora_rows_take_the_files_magnitudes() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let fixture = wrapped_fixtures().join("dora");
    let mut opened = open_adapter(&fixture, &ck, &cpu).unwrap();
    let file =
        spafit::checkpoint::WeightsFile::open(&fixture.join("adapter_model.safetensors")).unwrap();
    let name = |l: usize, module: &str| {
        format!(
            "base_model.model.bert.encoder.layer.{l}.attention.self.{module}.lora_magnitude_vector"
        )
    };
    let magnitude = |l: usize, module: &str| {
        file.read_f64(&name(l, module), &spafit::tensor::Shape::new([384]))
            .unwrap()
    };
    // Another adapter on query and value: its key maps are the base's.
    let base = open_adapter(&wrapped_fixtures().join("rank_stabilized"), &ck, &cpu)
        .unwrap()
        .model;
    for (l, layer) in opened.model.bert.layers.iter().enumerate() {
        for (linear, module) in [(&layer.query, "query"), (&layer.value, "value")] {
            let dora = linear
                .dora()
                .unwrap_or_else(|| panic!("layer {l} {module}"));
            let m = cpu.to_f64(&dora.magnitude.value).unwrap();
            assert_eq!(m, magnitude(l, module), "{}", name(l, module));
        }
    }
    opened.model.merge_lora(&cpu).unwrap();
    for (l, layer) in opened.model.bert.layers.iter().enumerate() {
        for (linear, module) in [(&layer.query, "query"), (&layer.value, "value")] {
            assert!(linear.lora.is_none());
            let w = cpu.to_f64(&linear.weight.value).unwrap();
            for (row, want) in w.chunks(384).zip(magnitude(l, module)) {
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!(
                    (norm - want).abs() <= 1e-13 * want,
                    "layer {l} {module}: {norm} vs {want}"
                );
            }
        }
        let untouched = &base.bert.layers[l].key.weight.value;
        assert_eq!(
            cpu.to_f64(&layer.key.weight.value).unwrap(),
            cpu.to_f64(untouched).unwrap()
        );
    }

    let first = name(0, "query");
    let refused = |edited: &Edited| match import_peft(edited.path(), &ck, &cpu) {
        Ok(_) => panic!("imported"),
        Err(e) => e.to_string(),
    };
    let a = Edited::copy_of(&fixture);
    a.config(|c| {
        c.insert("use_dora".into(), serde_json::json!(false));
    });
    let e = refused(&a);
    assert!(
        e.contains("is a DoRA magnitude, but `use_dora` is not true") && e.contains(&first),
        "{e}"
    );
    for (edit, wanted) in [
        ("drop", "lora_magnitude_vector` is missing"),
        ("shorten", "shape"),
        ("nan", "holds NaN at flat index 7"),
    ] {
        let a = Edited::copy_of(&fixture);
        a.tensors(|all| match edit {
            "drop" => all.retain(|(n, _, _)| *n != first),
            _ => {
                let t = all.iter_mut().find(|(n, _, _)| *n == first).unwrap();
                match edit {
                    "shorten" => {
                        t.1 = vec![383];
                        t.2.truncate(383);
                    }
                    _ => t.2[7] = f64::NAN,
                }
            }
        });
        let e = refused(&a);
        assert!(e.contains(wanted) && e.contains(&first), "{edit}: {e}");
    }
}

/// A DoRA adapter saved as spafit's own is version 5 (`lora.dora` true), which loads back to
/// bitwise its logits and which an older spafit (reading 1 to 4) refuses rather than
/// computing plain LoRA; exported, it declares `use_dora` and imports back to bitwise its
/// logits.
#[test]
fn dora_saves_as_version_5_and_exports_as_use_dora() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let opened = open_adapter(&wrapped_fixtures().join("dora"), &ck, &cpu).unwrap();
    let texts = ["a gorgeous, witty movie", "dull"];
    let (own, mut manifest) = saved_as_version(&ck, &cpu, &opened, &texts, 5);
    assert_eq!(manifest["lora"]["dora"], true);
    manifest["version"] = 1.into();
    std::fs::write(own.path().join("adapter.json"), manifest.to_string()).unwrap();
    let e = spafit::adapter::load_adapter(own.path(), &ck, &cpu)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`lora.dora` true") && e.contains("4 for DoRA"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = exported_config(dir.path(), &cpu, &opened.model, &opened.plan);
    assert_eq!(config["use_dora"], true);
    let (back, _) = import_peft(dir.path(), &ck, &cpu).unwrap();
    same_logits_bitwise(&ck, &cpu, &opened.model, &back, &texts);
}

/// A DoRA adapter trains with PEFT's gradients: `dora_gradients.json` (made by
/// `make_dora_gradients.py`) holds the loss PEFT's own backward started from, and each
/// trainable tensor's gradient norm and twelve of its elements, the rows' norms detached as
/// PEFT detaches them; dropout off.
#[test]
fn dora_gradients_are_pefts() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let fixtures = wrapped_fixtures();
    let oracle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("dora_gradients.json")).unwrap(),
    )
    .unwrap();
    let reference = common::PeftReference::read(&fixtures);
    let opened = open_adapter(&fixtures.join("dora"), &ck, &cpu).unwrap();
    let inputs: Vec<spafit::text::TextInput> = reference
        .texts()
        .into_iter()
        .map(spafit::text::TextInput::Single)
        .collect();
    let encoded = ck
        .tokenizer(reference.max_len)
        .unwrap()
        .encode_batch(&inputs)
        .unwrap();
    let input = spafit::model::ModelInput::for_model(&cpu, &encoded, &ck.config).unwrap();
    let labels: Vec<u32> = oracle["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let labels = spafit::model::Labels::Classes(
        cpu.tensor_from_u32(spafit::tensor::Shape::new([labels.len()]), &labels)
            .unwrap(),
    );
    let mut tape = spafit::autograd::Tape::new(cpu);
    let logits = opened
        .model
        .forward(&mut tape, &input, &mut spafit::nn::DropoutPlan::eval())
        .unwrap();
    let loss = opened.model.loss(&mut tape, &logits, &labels).unwrap();
    let want_loss = oracle["loss"].as_f64().unwrap();
    let got_loss = cpu.to_f64(loss.value()).unwrap()[0];
    assert!(
        (got_loss - want_loss).abs() <= 1e-12,
        "loss {got_loss} vs PEFT's {want_loss}"
    );
    let grads = tape.backward(&loss).unwrap();
    let tensors = oracle["tensors"].as_object().unwrap();
    let ours: Vec<&str> = grads.iter().map(|(n, _)| n).collect();
    let theirs: Vec<&str> = tensors.keys().map(String::as_str).collect();
    assert_eq!(ours, theirs, "the trainable tensors");
    let mut worst: f64 = 0.0;
    for (name, g) in grads.iter() {
        let g = cpu.to_f64(g).unwrap();
        let want = &tensors[name];
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let want_norm = want["norm"].as_f64().unwrap();
        let mut error = (norm - want_norm).abs() / want_norm;
        for element in want["elements"].as_array().unwrap() {
            let (i, v) = (
                element[0].as_u64().unwrap() as usize,
                element[1].as_f64().unwrap(),
            );
            error = error.max((g[i] - v).abs() / want_norm);
        }
        assert!(error <= 1e-9, "{name}: {error:e} from PEFT's gradient");
        worst = worst.max(error);
    }
    println!(
        "DORA-GRADIENTS {} tensors: loss {:.1e} from PEFT's, worst gradient {worst:.1e} (of its norm)",
        ours.len(),
        (got_loss - want_loss).abs()
    );
}

/// An `alpha_pattern` alone (the tensors' ranks unchanged) scales the adapters it names and
/// no others.
#[test]
fn an_alpha_pattern_scales_the_adapters_it_names() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let texts = ["a gorgeous, witty movie", "dull"];
    let plain = open_adapter(&fixtures().join("lora_qv"), &ck, &cpu).unwrap();
    let a = Edited::of("lora_qv");
    a.config(|c| {
        c.insert(
            "alpha_pattern".into(),
            serde_json::json!({"layer.3.attention.self.value": 48}),
        );
    });
    let edited = open_adapter(a.path(), &ck, &cpu).unwrap();
    for (l, layer) in edited.model.bert.layers.iter().enumerate() {
        let scale = |lin: &spafit::nn::Linear<CpuBackend>| lin.lora.as_ref().unwrap().scale;
        // lora_qv: r 8, lora_alpha 16.
        assert_eq!(scale(&layer.query), 2.0);
        assert_eq!(scale(&layer.value), if l == 3 { 6.0 } else { 2.0 });
    }
    let (x, y) = (
        common::logits(&ck, &cpu, &plain.model, &texts, 32),
        common::logits(&ck, &cpu, &edited.model, &texts, 32),
    );
    assert!(
        x.iter().zip(&y).any(|(p, q)| (p - q).abs() > 1e-6),
        "{x:?} vs {y:?}"
    );
}

#[test]
fn export_then_import_gives_bitwise_the_same_logits() {
    let ck = checkpoint();
    let texts = [
        "a gorgeous, witty movie",
        "dull",
        "it is not bad at all, is it?",
    ];
    for backend in [CpuBackend::f64(), CpuBackend::f32()] {
        for (name, plan) in plans() {
            let model = common::trained(&ck, &backend, &plan, 3);
            let dir = tempfile::tempdir().unwrap();
            let config = exported_config(dir.path(), &backend, &model, &plan);
            // PEFT restores every module in `modules_to_save` whole, and fails on a key it
            // lacks: each such module's every tensor must be in the file.
            let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
            let keys: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
                .unwrap()
                .names()
                .into_iter()
                .map(|k| k.trim_start_matches("base_model.model.").to_string())
                .collect();
            assert!(!keys.is_empty());
            for module in config["modules_to_save"].as_array().unwrap() {
                let module = module.as_str().unwrap();
                let prefix = match module {
                    "pooler" => "bert.pooler.".to_string(),
                    m => format!("{m}."),
                };
                for p in model
                    .params()
                    .into_iter()
                    .filter(|p| p.name.starts_with(&prefix))
                {
                    assert!(
                        keys.contains(&p.name),
                        "{name}: `{}` of saved module `{module}` is not in the file",
                        p.name
                    );
                }
            }
            let (back, import) = import_peft(dir.path(), &ck, &backend).unwrap();
            assert!(
                import.kept_frozen.is_empty(),
                "{name}: {:?}",
                import.kept_frozen
            );
            let (a, b) = (
                common::logits(&ck, &backend, &model, &texts, 32),
                common::logits(&ck, &backend, &back, &texts, 32),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name} on {}: {a:?} vs {b:?}",
                backend.name()
            );
            assert_eq!(import.plan.strata, plan.strata, "{name}");
            let sorted = |p: &PeftPlan| {
                let mut l = p.lora.clone().unwrap();
                l.targets.sort();
                l
            };
            assert_eq!(sorted(&import.plan), sorted(&plan), "{name}");
            assert_eq!(import.plan.method, plan.method, "{name}");
            assert_eq!(import.plan.train_pooler, plan.train_pooler, "{name}");
            assert_eq!(
                import.plan.train_layer_norm_weights, plan.train_layer_norm_weights,
                "{name}"
            );
            assert_eq!(
                import.plan.train_embeddings, plan.train_embeddings,
                "{name}"
            );
            assert_eq!(back.trainable_names(), model.trainable_names(), "{name}");
            assert!(import.notes.is_empty(), "{name}: {:?}", import.notes);
            println!(
                "PEFT-ROUNDTRIP {name} on {}: logits bitwise equal",
                backend.name()
            );
        }
    }
    // BitFit and full fine-tuning have no LoRA adapter: PEFT's LoRA format cannot hold them.
    let cpu = CpuBackend::f64();
    for method in [Method::BitFit, Method::Full] {
        let plan = PeftPlan::new(&PeftConfig::new(method), 6).unwrap();
        let model = common::trained(&ck, &cpu, &plan, 2);
        let dir = tempfile::tempdir().unwrap();
        let e = export_peft(
            dir.path(),
            &cpu,
            &model,
            &plan,
            &PeftExportRecord {
                base_model_name_or_path: "x",
                ..PeftExportRecord::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("no LoRA adapter"), "{method}: {e}");
    }
}

/// Every exported tensor, value by value: its PEFT name, PEFT's shape (`lora_A` `[r, in]`,
/// `lora_B` `[out, r]`, derived here from the frozen weight's `[out, in]`) and the model's
/// values; nothing else is in the file.
#[test]
fn export_holds_the_models_tensors_value_by_value() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    for (name, plan) in plans() {
        let model = common::trained(&ck, &cpu, &plan, 3);
        let dir = tempfile::tempdir().unwrap();
        export_peft(
            dir.path(),
            &cpu,
            &model,
            &plan,
            &PeftExportRecord {
                base_model_name_or_path: "all-MiniLM-L6-v2",
                ..PeftExportRecord::default()
            },
        )
        .unwrap();
        let file =
            spafit::checkpoint::WeightsFile::open(&dir.path().join("adapter_model.safetensors"))
                .unwrap();
        let params: BTreeMap<String, Vec<f64>> = model
            .params()
            .into_iter()
            .map(|p| (p.name.clone(), cpu.to_f64(&p.value).unwrap()))
            .collect();
        let shapes: BTreeMap<String, Vec<usize>> = model
            .params()
            .into_iter()
            .map(|p| (p.name.clone(), p.value.dims().to_vec()))
            .collect();
        let lora = plan.lora.as_ref().unwrap();
        let mut expected_names = Vec::new();
        // What trains, and the rest of a LayerNorm whose scale trains: PEFT saves that
        // module whole, so its frozen bias goes along with its base value.
        let saved_norms: Vec<String> = model
            .params()
            .into_iter()
            .filter(|p| p.trainable && p.name.ends_with("LayerNorm.weight"))
            .map(|p| p.name.replace(".weight", ".bias"))
            .collect();
        let exported =
            |p: &&spafit::nn::Param<CpuBackend>| p.trainable || saved_norms.contains(&p.name);
        for p in model.params().into_iter().filter(exported) {
            // Where PEFT keeps it: a bias of a module that carries LoRA sits in `base_layer`.
            let module = p.name.rsplit_once('.').unwrap().0;
            let wrapped = shapes.contains_key(&format!("{module}.lora_A.weight"));
            let peft_name = if wrapped && p.name.ends_with(".bias") {
                format!("base_model.model.{module}.base_layer.bias")
            } else {
                format!("base_model.model.{}", p.name)
            };
            let stored_shape = file
                .shape(&peft_name)
                .unwrap_or_else(|| panic!("{name}: `{peft_name}` is not in the export"));
            let want_shape = if let Some(m) = p.name.strip_suffix(".lora_A.weight") {
                let w = &shapes[&format!("{m}.weight")];
                vec![lora.rank, w[1]]
            } else if let Some(m) = p.name.strip_suffix(".lora_B.weight") {
                let w = &shapes[&format!("{m}.weight")];
                vec![w[0], lora.rank]
            } else {
                shapes[&p.name].clone()
            };
            assert_eq!(stored_shape, want_shape, "{name}: {peft_name}");
            let values = file
                .read_f64(&peft_name, &want_shape.clone().into())
                .unwrap();
            assert!(
                values
                    .iter()
                    .zip(&params[&p.name])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: {peft_name} holds other values than {}",
                p.name
            );
            expected_names.push(peft_name);
        }
        expected_names.sort();
        let mut stored: Vec<String> = file.names().to_vec();
        stored.sort();
        assert_eq!(stored, expected_names, "{name}: extra or missing tensors");
    }
}

/// transformers names a PEFT adapter's outputs by its base's `id2label`: a head trained on
/// the base's classes in another order is written in the base's order (row by row, the model
/// left as it was), its note records that order, and the import names every output's
/// probability as the trained model did.
#[test]
fn export_writes_the_head_in_the_bases_id2label_order() {
    let mut ck = checkpoint();
    let base_names = ["contradiction", "entailment", "neutral"];
    ck.config.id2label = base_names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), serde_json::json!(n)))
        .collect();
    let cpu = CpuBackend::f64();
    let (_, plan) = plans().into_iter().next().unwrap();
    let model = common::trained(&ck, &cpu, &plan, 3);
    let trained: Vec<String> = ["entailment", "neutral", "contradiction"]
        .map(String::from)
        .to_vec();
    let head_before = cpu.to_f64(&model.classifier.weight.value).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let order = export_peft(
        dir.path(),
        &cpu,
        &model,
        &plan,
        &PeftExportRecord {
            base_model_name_or_path: "all-MiniLM-L6-v2",
            labels: Some(&trained),
            ..PeftExportRecord::default()
        },
    )
    .unwrap();
    assert_eq!(
        order,
        spafit::adapter::ExportedClassOrder::BaseOrder {
            exported: base_names.map(String::from).to_vec()
        }
    );
    let head_after = cpu.to_f64(&model.classifier.weight.value).unwrap();
    assert_eq!(
        head_before, head_after,
        "the export changed the model's head"
    );
    let file = spafit::checkpoint::WeightsFile::open(&dir.path().join("adapter_model.safetensors"))
        .unwrap();
    let hidden = head_before.len() / 3;
    let stored = file
        .read_f64(
            "base_model.model.classifier.weight",
            &vec![3, hidden].into(),
        )
        .unwrap();
    let bias = cpu.to_f64(&model.classifier.bias.value).unwrap();
    let stored_bias = file
        .read_f64("base_model.model.classifier.bias", &vec![3].into())
        .unwrap();
    for (row, name) in base_names.iter().enumerate() {
        let was = trained.iter().position(|t| t == name).unwrap();
        assert_eq!(
            stored[row * hidden..(row + 1) * hidden],
            head_before[was * hidden..(was + 1) * hidden],
            "row {row} ({name})"
        );
        assert_eq!(stored_bias[row], bias[was], "bias {row} ({name})");
    }
    let note: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("spafit_export.json")).unwrap())
            .unwrap();
    assert_eq!(note["labels"], serde_json::json!(base_names));
    // Read back, each class's logit is the trained model's for that class.
    let opened = open_adapter(dir.path(), &ck, &cpu).unwrap();
    assert_eq!(
        opened.labels.as_deref(),
        Some(base_names.map(String::from).as_slice())
    );
    let texts = ["a first sentence", "and another, a little longer one"];
    let want = common::logits(&ck, &cpu, &model, &texts, 16);
    let got = common::logits(&ck, &cpu, &opened.model, &texts, 16);
    for (example, (w, g)) in want.chunks(3).zip(got.chunks(3)).enumerate() {
        for (row, name) in base_names.iter().enumerate() {
            let was = trained.iter().position(|t| t == name).unwrap();
            assert!(
                (g[row] - w[was]).abs() < 1e-12,
                "example {example}, {name}: {} against {}",
                g[row],
                w[was]
            );
        }
    }
}

/// A base that names no classes (transformers' `LABEL_0`, …) holds the classes 0 to n-1 by
/// number: a head trained on those numbers in another order is written in number order, so
/// that transformers' `LABEL_i` is class `i`; read back without the note that records the
/// order (PEFT saved it again), the numbers line it up with the data as trained.
#[test]
fn export_writes_numbered_classes_in_number_order_on_an_unnamed_base() {
    use spafit::data::TaskKind;
    let mut ck = checkpoint();
    ck.config.id2label = (0..3)
        .map(|i| (i.to_string(), serde_json::json!(format!("LABEL_{i}"))))
        .collect();
    let cpu = CpuBackend::f64();
    let (_, plan) = plans().into_iter().next().unwrap();
    let model = common::trained(&ck, &cpu, &plan, 3);
    let trained: Vec<String> = ["2", "0", "1"].map(String::from).to_vec();
    let dir = tempfile::tempdir().unwrap();
    let record = PeftExportRecord {
        base_model_name_or_path: "all-MiniLM-L6-v2",
        labels: Some(&trained),
        ..PeftExportRecord::default()
    };
    let order = export_peft(dir.path(), &cpu, &model, &plan, &record).unwrap();
    let numbers: Vec<String> = ["0", "1", "2"].map(String::from).to_vec();
    assert_eq!(
        order,
        spafit::adapter::ExportedClassOrder::BaseOrder {
            exported: numbers.clone()
        }
    );
    std::fs::remove_file(dir.path().join("spafit_export.json")).unwrap();
    let mut opened = open_adapter(dir.path(), &ck, &cpu).unwrap();
    assert_eq!(opened.labels, None);
    let data = TaskKind::Classification {
        labels: trained.clone(),
    };
    let done = opened.model.align_numbered_classes(&cpu, &data).unwrap();
    assert_eq!(
        done,
        spafit::model::ClassAlignment::Reordered {
            head_classes: numbers
        }
    );
    let texts = ["a first sentence", "and another, a little longer one"];
    let want = common::logits(&ck, &cpu, &model, &texts, 16);
    let got = common::logits(&ck, &cpu, &opened.model, &texts, 16);
    for (w, g) in want.iter().zip(&got) {
        assert!((w - g).abs() < 1e-12, "{want:?} against {got:?}");
    }
}

/// Folders that cannot hold an export or an adapter, or hold none to read, are named as
/// such (the system said "File exists" or "Not a directory"): a path that is a file or lies
/// under one, a model's folder; and a spafit export opened on another base says so before
/// what of its tensors that base lacks.
#[test]
fn paths_that_cannot_hold_or_give_an_adapter_are_named() {
    let ck = checkpoint();
    let cpu = CpuBackend::f64();
    let (_, plan) = plans().into_iter().next().unwrap();
    let model = common::trained(&ck, &cpu, &plan, 2);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "mine").unwrap();
    let record = PeftExportRecord {
        base_model_name_or_path: "all-MiniLM-L6-v2",
        base: Some(&ck.weights),
        ..PeftExportRecord::default()
    };
    for (dir, says) in [
        (file.clone(), format!("{} is a file", file.display())),
        (
            file.join("sub"),
            format!("lies under {}, which is a file", file.display()),
        ),
    ] {
        let e = export_peft(&dir, &cpu, &model, &plan, &record).unwrap_err();
        assert!(
            e.to_string().contains(&says)
                && e.to_string().contains("a PEFT export goes into a folder"),
            "{e}"
        );
        let e = spafit::adapter::save_adapter(
            &dir,
            &cpu,
            &model,
            &plan,
            &ck.weights,
            None,
            spafit::adapter::TrainingInputs::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(&says)
                && e.to_string().contains("an adapter goes into a folder"),
            "{e}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    let e = import_peft(&file, &ck, &cpu).err().unwrap().to_string();
    assert!(e.contains("a file, not an adapter folder"), "{e}");
    // A model's folder: transformers would read it as the model.
    let model_dir = tmp.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    std::fs::write(model_dir.join("config.json"), "{}").unwrap();
    let e = export_peft(&model_dir, &cpu, &model, &plan, &record).unwrap_err();
    assert!(e.to_string().contains("holds a model"), "{e}");
    // Exported from MiniLM, opened on tiny RoBERTa: the recorded base is the first word.
    let export = tmp.path().join("export");
    export_peft(&export, &cpu, &model, &plan, &record).unwrap();
    let roberta = Checkpoint::open(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta/model"),
    )
    .unwrap();
    let e = open_adapter(&export, &roberta, &cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("the adapter was trained on a base whose encoder tensors have sha256"),
        "{e}"
    );
}

/// A copy of a fixture adapter, with its config and tensors open to edits.
struct Edited {
    dir: tempfile::TempDir,
}

impl Edited {
    fn of(case: &str) -> Self {
        Self::copy_of(&fixtures().join(case))
    }

    fn copy_of(adapter: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(adapter.join(f), dir.path().join(f)).unwrap();
        }
        Edited { dir }
    }

    fn config(&self, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let path = self.dir.path().join("adapter_config.json");
        let mut json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }

    /// Rewrites the tensors: `edit` gets (name, shape, f64 values) and may change them.
    fn tensors(&self, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f64>)>)) {
        let path = self.dir.path().join("adapter_model.safetensors");
        let file = spafit::checkpoint::WeightsFile::open(&path).unwrap();
        let mut all: Vec<(String, Vec<usize>, Vec<f64>)> = file
            .names()
            .iter()
            .map(|n| {
                let shape = file.shape(n).unwrap();
                let v = file.read_f64(n, &shape.clone().into()).unwrap();
                (n.clone(), shape, v)
            })
            .collect();
        edit(&mut all);
        let stored: Vec<common::family_fixture::Stored> = all
            .into_iter()
            .map(|(n, s, v)| (n, safetensors::Dtype::F64, s, v))
            .collect();
        common::family_fixture::write_tensors(&path, &stored);
    }

    fn error(&self) -> String {
        let ck = checkpoint();
        match import_peft(self.dir.path(), &ck, &CpuBackend::f64()) {
            Ok(_) => panic!("imported"),
            Err(e) => e.to_string(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[test]
fn what_spafit_cannot_represent_is_refused_naming_the_field() {
    use serde_json::json;
    let config_cases: Vec<(&str, serde_json::Value, &str)> = vec![
        // lora_qv holds no DoRA magnitudes.
        (
            "use_dora",
            json!(true),
            "attention.self.query.lora_magnitude_vector` is missing: `use_dora` is true",
        ),
        ("use_rslora", json!("yes"), "is not true or false"),
        ("use_dora", json!("false"), "is not true or false"),
        (
            "bias",
            json!("foo"),
            "PEFT knows \"none\", \"all\" and \"lora_only\"",
        ),
        // The file's tensors have rank 8: the pattern's rank 4 is not theirs.
        (
            "rank_pattern",
            json!({"query": 4}),
            "the file's adapter has rank 8, where `r` and `rank_pattern` in adapter_config.json give it rank 4",
        ),
        ("rank_pattern", json!({"value": 2.5}), "`value`: 2.5 is not a positive rank"),
        // PEFT fails on a float rank too, whole or not, as spafit refuses `r` 4.0.
        ("rank_pattern", json!({"value": 4.0}), "`value`: 4.0 is not a positive rank"),
        ("rank_pattern", json!({"value": 0}), "`value`: 0 is not a positive rank"),
        ("rank_pattern", json!({"value": "4"}), "`value`: \"4\" is not a positive rank"),
        (
            "alpha_pattern",
            json!({"layer.3.attention.self.value": -1}),
            "`layer.3.attention.self.value`: -1 is no adapter's alpha",
        ),
        // Sets Python's `re` reads otherwise than Rust's regex: the wrong modules, silently.
        (
            "alpha_pattern",
            json!({"layer\\.[[3]]\\.attention\\.self\\.query": 7}),
            "would match other modules here than in Python",
        ),
        (
            "rank_pattern",
            json!({"layer\\.[0-5&&3]\\.attention\\.self\\.query": 8}),
            "`&&` inside a character class",
        ),
        (
            "target_modules",
            json!(".*layer\\.[0-5--3]\\.attention\\.self\\.(query|value)"),
            "`--` inside a character class",
        ),
        (
            "alpha_pattern",
            json!({"(?<=self).value": 1}),
            "does not compile here",
        ),
        (
            "init_lora_weights",
            json!("pissa"),
            "changes the base weights",
        ),
        (
            "init_lora_weights",
            json!("olora"),
            "changes the base weights",
        ),
        (
            "init_lora_weights",
            json!("loftq"),
            "changes the base weights",
        ),
        (
            "layer_replication",
            json!([[0, 4], [2, 6]]),
            "replicated layers",
        ),
        ("lora_bias", json!(true), "bias on LoRA's B"),
        ("peft_type", json!("IA3"), "LoRA adapters only"),
        ("task_type", json!("CAUSAL_LM"), "SEQ_CLS"),
        ("use_qalora", json!(true), "does not support"),
        ("a_future_option", json!(3), "does not support"),
        ("layers_pattern", json!("h"), "BERT's layers"),
        ("layers_pattern", json!(["layers", "h"]), "BERT's layers"),
        ("layers_pattern", json!(["layer", "l.*"]), "BERT's layers"),
        // A regex Rust's crate cannot compile, with the file named as every field's error.
        (
            "alpha_pattern",
            json!({"(?!.*layer\\.0).*value": 4}),
            "adapter_config.json: `alpha_pattern`: the pattern `(?!.*layer\\.0).*value` does not compile here",
        ),
        ("target_modules", json!("(?=query).*"), "does not compile"),
        ("target_modules", json!(["dense"]), "bert.pooler.dense"),
        (
            "target_modules",
            json!(["word_embeddings", "query", "value"]),
            "word_embeddings",
        ),
        ("lora_alpha", json!(null), "not a number"),
        // The file's field, not a flag nobody gave, and the file named (below).
        (
            "lora_alpha",
            json!(0),
            "alpha (`lora_alpha`) is 0: the LoRA scale",
        ),
        ("lora_alpha", json!(-16), "needs α > 0"),
        (
            "lora_alpha",
            json!(1e300),
            "alpha (`lora_alpha`) 1e300 gives the LoRA scale",
        ),
        ("r", json!(0), "positive rank"),
        // Tensors the selection leaves out: the fields that select are named, not only
        // `target_modules`.
        (
            "layers_to_transform",
            json!([7]),
            "`target_modules`, `layers_to_transform` [7] together in adapter_config.json do not select",
        ),
        (
            "exclude_modules",
            json!(["value"]),
            "`target_modules`, `exclude_modules` together in adapter_config.json do not select",
        ),
        ("r", json!(512), "exceeds 384"),
    ];
    for (field, value, needle) in config_cases {
        let a = Edited::of("lora_qv");
        a.config(|c| {
            c.insert(field.to_string(), value.clone());
        });
        let e = a.error();
        assert!(
            e.contains(&format!("`{field}`")) || e.contains(needle),
            "{field} = {value}: {e}"
        );
        assert!(e.contains(needle), "{field} = {value}: {e}");
        assert!(!e.contains("--lora-"), "{field} = {value}: {e}");
        if field == "lora_alpha" {
            assert!(e.contains("adapter_config.json"), "{field} = {value}: {e}");
        }
        println!("PEFT-REFUSED {field} = {value}: {e}");
    }

    // Settings that change nothing here are accepted: patterns that match no adapted module
    // or repeat the global value, PEFT's plain initialisations, a longer layers pattern.
    let harmless: Vec<(&str, serde_json::Value)> = vec![
        ("rank_pattern", json!({"nomatch": 4})),
        ("rank_pattern", json!({"query": 8})),
        ("alpha_pattern", json!({"layer.7.attention.self.value": 4})),
        ("init_lora_weights", json!("gaussian")),
        ("init_lora_weights", json!("eva")),
        (
            "eva_config",
            json!({"rho": 1.0, "adjust_scaling_factors": true}),
        ),
        ("init_lora_weights", json!(false)),
        // B frozen in PEFT's training, the base untouched: plain LoRA to compute with.
        ("init_lora_weights", json!("mica")),
        ("layers_pattern", json!("encoder.layer")),
        // PEFT tries the names in turn; `layers` names no numbered module here.
        ("layers_pattern", json!(["layers", "layer"])),
        // PEFT resets it to false for linear maps, as BERT's all are.
        ("fan_in_fan_out", json!(true)),
    ];
    for (field, value) in harmless {
        let a = Edited::of("lora_qv");
        a.config(|c| {
            c.insert(field.to_string(), value.clone());
        });
        let (_, import) = import_peft(a.path(), &checkpoint(), &CpuBackend::f64())
            .unwrap_or_else(|e| panic!("{field} = {value}: {e}"));
        // A pattern key that matches no adapted module is noted, as PEFT warns of it.
        let unmatched = match value.as_object().and_then(|o| o.keys().next()) {
            Some(key) if field.ends_with("_pattern") && key != "query" => {
                vec![format!("`{field}` key `{key}` matches no adapted module")]
            }
            _ => Vec::new(),
        };
        let noted: Vec<&String> = import
            .notes
            .iter()
            .filter(|n| n.contains("matches no adapted module"))
            .collect();
        assert_eq!(
            noted.len(),
            unmatched.len(),
            "{field} = {value}: {:?}",
            import.notes
        );
        for (note, want) in noted.iter().zip(&unmatched) {
            assert!(note.contains(want.as_str()), "{note}");
        }
        let frozen_b = import
            .frozen_in_peft_training
            .map(|(init, b)| (init, b.len()));
        let trainable = open_adapter(a.path(), &checkpoint(), &CpuBackend::f64())
            .unwrap()
            .check_trainable(a.path())
            .map_err(|e| e.to_string());
        match value.as_str() {
            Some("mica") => {
                assert_eq!(frozen_b, Some(("mica".into(), 12)));
                let e = trainable.unwrap_err();
                assert!(
                    e.contains("PEFT keeps the adapter's 12 lora_B matrices"),
                    "{e}"
                );
            }
            _ => {
                assert_eq!(frozen_b, None, "{field} = {value}");
                assert_eq!(trainable, Ok(()), "{field} = {value}");
            }
        }
    }

    // An adapter made for a base with more layers, or with fewer, says so.
    let a = Edited::of("lora_qv");
    a.tensors(|t| {
        for (n, _, _) in t.iter_mut() {
            *n = n.replace(".layer.5.", ".layer.7.");
        }
    });
    let e = a.error();
    assert!(
        e.contains("tensors for encoder layer 7 but this base model has 6 layers"),
        "{e}"
    );
    let a = Edited::of("lora_qv");
    a.tensors(|t| t.retain(|(n, _, _)| !n.contains(".layer.4.") && !n.contains(".layer.5.")));
    let e = a.error();
    assert!(
        e.contains("no LoRA tensors for `bert.encoder.layer.4.attention.self.query`")
            && e.contains("stop at layer 3 of this 6-layer base model"),
        "{e}"
    );

    // An adapter PEFT saved under another name sits in a folder of that name: the error
    // points there.
    let outer = tempfile::tempdir().unwrap();
    let named = outer.path().join("sst");
    std::fs::create_dir(&named).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixtures().join("lora_qv").join(f), named.join(f)).unwrap();
    }
    let e = match open_adapter(outer.path(), &checkpoint(), &CpuBackend::f64()) {
        Ok(_) => panic!("opened a folder without an adapter"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("adapters are in") && e.contains("sst"), "{e}");

    // An adapter saved from a diverged run: every prediction would be NaN.
    let a = Edited::of("lora_qv");
    a.tensors(|t| {
        let e = t
            .iter_mut()
            .find(|(n, _, _)| n == b_name_for_nan())
            .unwrap();
        e.2[5] = f64::NAN;
    });
    let e = match open_adapter(a.path(), &checkpoint(), &CpuBackend::f64()) {
        Ok(_) => panic!("opened an adapter holding NaN"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("layer.2.attention.self.value.lora_B.weight") && e.contains("NaN"),
        "{e}"
    );

    // A regex that adapts other maps in other layers (the file agreeing with it).
    let a = Edited::of("lora_qv");
    a.config(|c| {
        c.insert(
            "target_modules".into(),
            json!(r".*\.layer\.0\.attention\.self\.(query|value)|.*\.layer\.[1-5]\.attention\.self\.query"),
        );
    });
    a.tensors(|t| t.retain(|(n, _, _)| n.contains("layer.0.") || !n.contains(".value.lora_")));
    // Read as every layer's query and value with the values of layers 1-5 left out: the
    // outputs of lora_qv with those values' B zero (their adapters adding nothing).
    let cpu = CpuBackend::f64();
    let opened = open_adapter(a.path(), &checkpoint(), &cpu).unwrap();
    let lora = opened.plan.lora.as_ref().unwrap();
    assert_eq!(lora.targets, [LoraTarget::Query, LoraTarget::Value]);
    let left_out: Vec<LoraSite> = (1..6)
        .map(|layer| LoraSite {
            layer,
            target: LoraTarget::Value,
        })
        .collect();
    assert_eq!(lora.unadapted, left_out);
    let zeroed = Edited::of("lora_qv");
    zeroed.tensors(|t| {
        for (n, _, v) in t.iter_mut() {
            if !n.contains("layer.0.") && n.contains(".value.lora_B") {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
        }
    });
    let reference = open_adapter(zeroed.path(), &checkpoint(), &cpu).unwrap();
    let texts = ["a gorgeous, witty movie", "dull"];
    let (x, y) = (
        common::logits(&checkpoint(), &cpu, &opened.model, &texts, 32),
        common::logits(&checkpoint(), &cpu, &reference.model, &texts, 32),
    );
    assert!(
        x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1e-15),
        "{x:?} vs {y:?}"
    );

    // Tensors that stop short of the layers the config selects: an adapter made for a
    // smaller model, where the config selects maps in every layer past the file's last...
    let a = Edited::of("lora_qv");
    a.tensors(|t| {
        t.retain(|(n, _, _)| {
            !["layer.3.", "layer.4.", "layer.5."]
                .iter()
                .any(|l| n.contains(l))
        })
    });
    let e = a.error();
    assert!(
        e.contains("no LoRA tensors for `bert.encoder.layer.3.attention.self.query`")
            && e.contains("the adapter's tensors stop at layer 2 of this 6-layer base model"),
        "{e}"
    );
    // ...but tensors missing from the file where the config skips a later layer.
    let a = Edited::of("lora_qv");
    a.config(|c| {
        c.insert(
            "target_modules".into(),
            json!(r".*\.layer\.[0-4]\.attention\.self\.(query|value)"),
        );
    });
    a.tensors(|t| t.retain(|(n, _, _)| !n.contains("layer.4.") && !n.contains("layer.5.")));
    let e = a.error();
    assert!(
        e.contains("no LoRA tensors for `bert.encoder.layer.4.attention.self.query`")
            && !e.contains("fewer layers"),
        "{e}"
    );

    // Tensors that do not fit: a transposed lora_B, a missing one, one for a module the
    // config does not target, a tensor the model does not have, no classifier.
    let b_name = "base_model.model.bert.encoder.layer.2.attention.self.value.lora_B.weight";
    let a = Edited::of("lora_qv");
    a.tensors(|t| {
        let e = t.iter_mut().find(|(n, _, _)| n == b_name).unwrap();
        e.1.reverse();
    });
    let e = a.error();
    assert!(e.contains(b_name) && e.contains("[8, 384]"), "{e}");

    let a = Edited::of("lora_qv");
    a.tensors(|t| t.retain(|(n, _, _)| n != b_name));
    let e = a.error();
    assert!(e.contains("lora_B.weight` is missing"), "{e}");

    let a = Edited::of("lora_qv");
    a.config(|c| {
        c.insert("target_modules".into(), json!(["query"]));
    });
    let e = a.error();
    assert!(e.contains("value") && e.contains("does not select"), "{e}");

    let a = Edited::of("lora_qv");
    a.tensors(|t| {
        t.push((
            "base_model.model.bert.encoder.layer.9.output.dense.bias".into(),
            vec![384],
            vec![0.0; 384],
        ))
    });
    let e = a.error();
    assert!(
        e.contains("layer.9.output.dense.bias") && e.contains("has 6 layers"),
        "{e}"
    );

    let a = Edited::of("lora_qv");
    a.tensors(|t| t.retain(|(n, _, _)| !n.contains("classifier")));
    let e = a.error();
    assert!(
        e.contains("classifier") && e.contains("modules_to_save"),
        "{e}"
    );
    // `modules_to_save` entries matching modules inside one another (PEFT matches by the end
    // of a name): each wrapper keeps a copy, and which the model ran with is unknowable.
    for (entries, needle) in [
        (
            json!(["classifier", "pooler", "dense"]),
            "`dense` matches `bert.pooler.dense`",
        ),
        (
            json!(["classifier", "embeddings"]),
            "`embeddings` matches both `bert.embeddings`",
        ),
        (
            json!(["classifier", "layer.2.attention", "attention.output"]),
            "inside it",
        ),
    ] {
        let a = Edited::of("lora_qv");
        a.config(|c| {
            c.insert("modules_to_save".into(), entries.clone());
        });
        let e = a.error();
        assert!(
            e.contains("`modules_to_save`") && e.contains(needle),
            "{entries}: {e}"
        );
    }
    // Entries that do not nest still load (the pooler; every `dense` map, none inside
    // another).
    for entries in [
        json!(["classifier", "pooler"]),
        json!(["classifier", "dense"]),
    ] {
        let a = Edited::of("lora_qv");
        a.config(|c| {
            c.insert("modules_to_save".into(), entries.clone());
        });
        assert!(
            open_adapter(a.path(), &checkpoint(), &CpuBackend::f64()).is_ok(),
            "{entries}"
        );
    }
    // Two wrapper copies of one tensor in the file are refused, naming both.
    let a = Edited::of("lora_qv");
    a.tensors(|t| {
        for name in [
            "base_model.model.bert.pooler.dense.modules_to_save.bias",
            "base_model.model.bert.pooler.modules_to_save.default.dense.bias",
        ] {
            t.push((name.into(), vec![384], vec![0.0; 384]));
        }
    });
    let e = a.error();
    assert!(
        e.contains("`bert.pooler.dense.bias` is stored as 2 copies")
            && e.contains("pooler.modules_to_save.default.dense.bias"),
        "{e}"
    );

    // Half a head is no head: PEFT refuses it too.
    let a = Edited::of("lora_qv");
    a.tensors(|t| t.retain(|(n, _, _)| !n.ends_with("classifier.bias")));
    let e = a.error();
    assert!(
        e.contains("classifier.bias") && e.contains("saves `classifier` whole"),
        "{e}"
    );

    let a = Edited::of("lora_qv");
    std::fs::write(
        a.path().join("adapter_config.json"),
        "{\n  \"r\": 8,\n  oops\n}",
    )
    .unwrap();
    let e = a.error();
    assert!(
        e.contains("adapter_config.json") && e.contains("line 3"),
        "{e}"
    );

    let a = Edited::of("lora_qv");
    std::fs::remove_file(a.path().join("adapter_model.safetensors")).unwrap();
    std::fs::write(a.path().join("adapter_model.bin"), b"pickle").unwrap();
    let e = a.error();
    assert!(e.contains("safe_serialization"), "{e}");

    // A directory with neither format.
    let empty = tempfile::tempdir().unwrap();
    let e = open_adapter(empty.path(), &checkpoint(), &CpuBackend::f64())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("adapter.json") && e.contains("adapter_config.json"),
        "{e}"
    );
    assert!(matches!(
        open_adapter(
            &empty.path().join("nope"),
            &checkpoint(),
            &CpuBackend::f64()
        ),
        Err(Error::Io { .. })
    ));
}

fn b_name_for_nan() -> &'static str {
    "base_model.model.bert.encoder.layer.2.attention.self.value.lora_B.weight"
}

#[test]
fn the_first_matching_rank_pattern_decides_as_in_peft() {
    // PEFT 0.21.2 walks `rank_pattern` in the file's order and stops at the first match:
    // with these two configs its layer-0 query gets rank 8 and 4 (checked there with
    // `get_peft_model`). lora_qv's tensors have rank 8 everywhere, so the second config
    // does not describe them.
    for (patterns, accepted) in [
        (r#"{"query": 8, "layer.0.attention.self.query": 4}"#, true),
        (r#"{"layer.0.attention.self.query": 4, "query": 8}"#, false),
    ] {
        let a = Edited::of("lora_qv");
        let path = a.path().join("adapter_config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""rank_pattern": {}"#));
        let text = text.replace(
            r#""rank_pattern": {}"#,
            &format!(r#""rank_pattern": {patterns}"#),
        );
        std::fs::write(&path, text).unwrap();
        match import_peft(a.path(), &checkpoint(), &CpuBackend::f64()) {
            Ok(_) => assert!(accepted, "{patterns} accepted"),
            Err(e) => {
                let e = e.to_string();
                assert!(!accepted, "{patterns}: {e}");
                assert!(
                    e.contains("has rank 8, where `r` and `rank_pattern` in adapter_config.json give it rank 4")
                        && e.contains("bert.encoder.layer.0.attention.self.query.lora_A"),
                    "{e}"
                );
            }
        }
    }
}

/// An adapter PEFT trained on a base whose config.json sets a `problem_type` its head is not
/// read as here (a regression of several outputs, a classifier of one) was trained for that
/// problem, since transformers gives the base's `problem_type` to the whole model: opening it
/// warns that spafit's probabilities are not those of the model it came from. On a
/// multi-label base its head is read as multi-label, without a warning. A base without one
/// gives no such warning, and the logits are the same either way.
#[test]
fn adapters_on_a_base_of_another_problem_type_are_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let base_with = |name: &str, problem_type: &str| {
        let dir = common::minilm_with_problem_type(&tmp.path().join(name), problem_type);
        Checkpoint::open(&dir).unwrap()
    };
    let cpu = CpuBackend::f64();
    let warned = |opened: &spafit::adapter::OpenedAdapter<CpuBackend>| {
        opened.warnings.iter().any(|w| w.contains("`problem_type`"))
    };
    let plain = checkpoint();
    for (adapter, problem_type, warns) in [
        ("lora_qv", "multi_label_classification", false),
        ("lora_qv", "regression", true),
        ("lora_qv", "single_label_classification", false),
        ("lora_regression", "single_label_classification", true),
        ("lora_regression", "regression", false),
    ] {
        let dir = fixtures().join(adapter);
        let base = base_with(&format!("{adapter}-{problem_type}"), problem_type);
        let opened = open_adapter(&dir, &base, &cpu).unwrap();
        assert_eq!(
            warned(&opened),
            warns,
            "{adapter} on {problem_type}: {:?}",
            opened.warnings
        );
        let multi_label = problem_type == "multi_label_classification";
        assert_eq!(opened.model.is_multi_label(), multi_label);
        assert_eq!(opened.head().default_kind().is_multi_label(), multi_label);
        let unset = open_adapter(&dir, &plain, &cpu).unwrap();
        assert!(!warned(&unset), "{adapter}: {:?}", unset.warnings);
        assert!(!unset.model.is_multi_label() && unset.multi_label.is_none());
        let texts = ["a fine film", "dull"];
        assert_eq!(
            common::logits(&base, &cpu, &opened.model, &texts, 16),
            common::logits(&plain, &cpu, &unset.model, &texts, 16)
        );
    }
}

/// A module saved whole with its base's own values changes nothing, in bf16 too, where the
/// base's frozen layers are stored in bf16 as they load: the file is judged against the
/// checkpoint's values, not their rounding. Here `key_saved_not_adapted`'s key maps are
/// rewritten with the base's values, except layer 0's (perturbed, so kept frozen).
#[test]
fn a_module_saved_with_its_base_values_is_not_kept_frozen_in_bf16() {
    use common::family_fixture::{write_tensors, Stored};
    let ck = checkpoint();
    let source = wrapped_fixtures().join("key_saved_not_adapted");
    let dir = tempfile::tempdir().unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let weights = dir.path().join("adapter_model.safetensors");
    let file = spafit::checkpoint::WeightsFile::open(&weights).unwrap();
    // Every tensor as f64, which holds the file's f16 values exactly.
    let tensors: Vec<Stored> = file
        .names()
        .iter()
        .map(|name| {
            let shape = file.shape(name).unwrap();
            let base = name.strip_prefix("base_model.model.").unwrap_or(name);
            let values = match base.contains(".self.key.") && !base.contains("layer.0.") {
                true => ck.weights.read_f64(base, &shape.clone().into()),
                false => file.read_f64(name, &shape.clone().into()),
            };
            let values = values.unwrap();
            (name.clone(), safetensors::Dtype::F64, shape, values)
        })
        .collect();
    drop(file);
    write_tensors(&weights, &tensors);
    for (precision, backend) in [("f32", CpuBackend::f32()), ("bf16", CpuBackend::bf16())] {
        let (_, import) = import_peft(dir.path(), &ck, &backend).unwrap();
        let keys: Vec<&String> = import
            .kept_frozen
            .iter()
            .filter(|n| n.contains(".self.key."))
            .collect();
        // Layer 0's key weight keeps the fixture's perturbed values (its bias is the base's).
        assert_eq!(
            keys,
            ["bert.encoder.layer.0.attention.self.key.weight"],
            "{precision}"
        );
    }
}
