//! Loading Hugging Face checkpoints: dtypes, name prefixes, the hub cache layout, and every
//! failure as an error naming the file and the tensor or field.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{host, tiny_bert};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use spafit::backend::cpu::CpuBackend;
use spafit::checkpoint::{resolve_with_caches, BertConfig, Checkpoint};
use spafit::model::BertClassifier;
use spafit::Error;

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

fn encode(dtype: Dtype, values: &[f64]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        Dtype::F64 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
            .collect(),
        Dtype::I64 => values
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Writes a checkpoint directory: config.json + model.safetensors in `dtype`, names with or
/// without the `bert.` prefix, plus the `position_ids` buffer real checkpoints carry.
fn write_checkpoint(dir: &Path, config: &str, tensors: &Tensors, dtype: Dtype, prefix: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, v))| {
            let name = if prefix {
                name.clone()
            } else {
                name.trim_start_matches("bert.").to_string()
            };
            (name, dtype, shape.clone(), encode(dtype, v))
        })
        .collect();
    let pos: Vec<f64> = (0..11).map(f64::from).collect();
    owned.push((
        "embeddings.position_ids".into(),
        Dtype::I64,
        vec![1, 11],
        encode(Dtype::I64, &pos),
    ));
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn tiny_config_json(layers: usize) -> String {
    format!(
        r#"{{"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 29, "hidden_size": 15,
            "num_hidden_layers": {layers}, "num_attention_heads": 3, "intermediate_size": 13,
            "max_position_embeddings": 11, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}}"#
    )
}

fn load_err(dir: &Path) -> Error {
    match Checkpoint::open(dir)
        .and_then(|ck| BertClassifier::from_checkpoint(&ck, &CpuBackend::f64(), 2, 0))
    {
        Ok(_) => panic!("{}: expected a loading error", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn every_float_dtype_and_both_name_styles_load() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = tiny_bert::tensors(&tiny_bert::config(2), 5);
    let probe = "bert.encoder.layer.1.output.dense.weight";
    let (_, exact) = &tensors[probe];
    for (dtype, tol) in [
        (Dtype::F32, 1e-7),
        (Dtype::F64, 0.0),
        (Dtype::F16, 1e-3),
        (Dtype::BF16, 8e-3),
    ] {
        for prefix in [false, true] {
            let dir = tmp.path().join(format!("{dtype:?}-{prefix}"));
            write_checkpoint(&dir, &tiny_config_json(2), &tensors, dtype, prefix);
            let ck = Checkpoint::open(&dir).unwrap();
            let model = BertClassifier::from_checkpoint(&ck, &CpuBackend::f64(), 2, 0).unwrap();
            let p = model
                .params()
                .into_iter()
                .find(|p| p.name == probe)
                .unwrap();
            let got = host(&p.value);
            let worst = got
                .iter()
                .zip(exact)
                .map(|(g, e)| ((g - e) / e).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= tol,
                "{dtype:?} prefix={prefix}: relative rounding {worst}"
            );
            assert_eq!(model.params().len(), 7 + 2 * 16 + 2);
        }
    }
    // LayerNorm tensors under their TensorFlow-era names (`gamma`, `beta`), as in
    // bert-base-uncased's own files: transformers renames them, and so does the loader.
    let legacy: Tensors = tensors
        .iter()
        .map(|(n, v)| {
            let n = n
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (n, v.clone())
        })
        .collect();
    assert!(legacy.contains_key("bert.encoder.layer.1.output.LayerNorm.gamma"));
    let cpu = CpuBackend::f64();
    let values = |dir: &Path| -> Vec<(String, Vec<f64>)> {
        let ck = Checkpoint::open(dir).unwrap();
        let model = BertClassifier::from_checkpoint(&ck, &cpu, 2, 0).unwrap();
        let named = model
            .params()
            .into_iter()
            .map(|p| (p.name.clone(), host(&p.value)));
        named.collect()
    };
    for prefix in [false, true] {
        let dir = tmp.path().join(format!("legacy-{prefix}"));
        write_checkpoint(&dir, &tiny_config_json(2), &legacy, Dtype::F64, prefix);
        let modern = tmp.path().join(format!("F64-{prefix}"));
        assert_eq!(values(&dir), values(&modern), "prefix={prefix}");
    }
}

/// The name `tiny_bert::tensors` uses for the tensor `spelled` names another way.
fn name_of_twin(spelled: &str) -> String {
    let modern = spelled
        .replace("LayerNorm.gamma", "LayerNorm.weight")
        .replace("LayerNorm.beta", "LayerNorm.bias");
    if modern.starts_with("bert.") {
        modern
    } else {
        format!("bert.{modern}")
    }
}

#[test]
fn missing_misshapen_and_wrongly_typed_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tiny_bert::tensors(&tiny_bert::config(2), 5);

    let mut missing = full.clone();
    missing.remove("bert.encoder.layer.1.output.dense.bias");
    let dir = tmp.path().join("missing");
    write_checkpoint(&dir, &tiny_config_json(2), &missing, Dtype::F32, false);
    let e = load_err(&dir).to_string();
    // Named as the file spells its tensors: without `bert.` here.
    assert!(
        e.contains("model.safetensors")
            && e.contains("tensor `encoder.layer.1.output.dense.bias` is missing"),
        "{e}"
    );

    // Without any pooler the checkpoint loads (a fresh pooler, which must train); half a
    // pooler is a broken file.
    let mut half_pooler = full.clone();
    half_pooler.remove("bert.pooler.dense.bias");
    let dir = tmp.path().join("half-pooler");
    write_checkpoint(&dir, &tiny_config_json(2), &half_pooler, Dtype::F32, false);
    let e = load_err(&dir).to_string();
    assert!(e.contains("tensor `pooler.dense.bias` is missing"), "{e}");
    let dir = tmp.path().join("half-pooler-prefixed");
    write_checkpoint(&dir, &tiny_config_json(2), &half_pooler, Dtype::F32, true);
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("tensor `bert.pooler.dense.bias` is missing"),
        "{e}"
    );

    let mut misshapen = full.clone();
    misshapen.insert(
        "bert.pooler.dense.weight".into(),
        (vec![15, 14], vec![0.5; 210]),
    );
    let dir = tmp.path().join("misshapen");
    write_checkpoint(&dir, &tiny_config_json(2), &misshapen, Dtype::F32, true);
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("bert.pooler.dense.weight") && e.contains("[15, 14]") && e.contains("[15, 15]"),
        "{e}"
    );

    // A config that claims more layers than the file holds (up to absurdly many, which must
    // not allocate for them), or fewer (which would run a truncated model): both refused.
    for (layers, name) in [
        (3, "deeper-config"),
        (1, "shallower-config"),
        (1_000_000_000_000, "absurd-config"),
    ] {
        let dir = tmp.path().join(name);
        write_checkpoint(&dir, &tiny_config_json(layers), &full, Dtype::F32, false);
        let e = load_err(&dir).to_string();
        assert!(
            e.contains("model.safetensors")
                && e.contains("holds 2 encoder layers")
                && e.contains(&format!("`num_hidden_layers` is {layers}")),
            "{e}"
        );
        // Only the config cut short (a pruning transformers follows) gets the two ways out.
        let remedy = "set `num_hidden_layers` to 2 to run them all, or save the weights \
                      without the layers past it to run 1";
        assert_eq!(e.contains(remedy), layers == 1, "{e}");
    }

    // A vocabulary the config does not match.
    let dir = tmp.path().join("vocab");
    write_checkpoint(
        &dir,
        &tiny_config_json(2).replace("\"vocab_size\": 29", "\"vocab_size\": 30"),
        &full,
        Dtype::F32,
        false,
    );
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("word_embeddings") && e.contains("[29, 15]") && e.contains("[30, 15]"),
        "{e}"
    );

    // One LayerNorm under both its names, and one tensor with and without `bert.`: which
    // is meant is ambiguous (transformers and a lookup order disagree), so refused.
    for (name, spelled) in [
        (
            "gamma-and-weight",
            "bert.encoder.layer.0.output.LayerNorm.gamma",
        ),
        (
            "prefix-and-not",
            "encoder.layer.1.attention.self.query.bias",
        ),
    ] {
        let mut doubled = full.clone();
        let original = name_of_twin(spelled);
        let (shape, mut values) = full[&original].clone();
        values[0] += 1.0;
        doubled.insert(spelled.to_string(), (shape, values));
        let dir = tmp.path().join(name);
        write_checkpoint(&dir, &tiny_config_json(2), &doubled, Dtype::F32, true);
        let e = load_err(&dir).to_string();
        let short = spelled.trim_start_matches("bert.");
        assert!(
            e.contains("two spellings") && e.contains(&original) && e.contains(short),
            "{name}: {e}"
        );
    }

    // Weights saved under a wrapper's prefix (`model.`): the message names the stored name.
    let dir = tmp.path().join("model-prefix");
    let mut wrapped: Tensors = full
        .iter()
        .map(|(n, t)| (n.replacen("bert.", "model.", 1), t.clone()))
        .collect();
    wrapped.insert("classifier.weight".into(), (vec![2, 15], vec![0.1; 30]));
    wrapped.insert("classifier.bias".into(), (vec![2], vec![0.0; 2]));
    write_checkpoint(&dir, &tiny_config_json(2), &wrapped, Dtype::F32, true);
    for e in [
        load_err(&dir).to_string(),
        Checkpoint::open(&dir)
            .and_then(|ck| BertClassifier::from_fine_tuned(&ck, &CpuBackend::f64()))
            .expect_err("no encoder under a known prefix")
            .to_string(),
    ] {
        assert!(
            e.contains("the file has `model.") && e.contains("prefix spafit does not read"),
            "{e}"
        );
    }
    std::fs::write(dir.join("config.json"), "[]").unwrap();
    let e = Checkpoint::open(&dir)
        .expect_err("an array config")
        .to_string();
    assert!(e.contains("holds an array, not a JSON object"), "{e}");

    // Non-finite weights give NaN logits (and a meaningless accuracy): refused by name.
    for (value, shown) in [(f64::NAN, "NaN"), (f64::INFINITY, "inf")] {
        let mut broken = full.clone();
        broken
            .get_mut("bert.encoder.layer.1.attention.output.dense.weight")
            .unwrap()
            .1[7] = value;
        let dir = tmp.path().join(format!("non-finite-{shown}"));
        write_checkpoint(&dir, &tiny_config_json(2), &broken, Dtype::BF16, false);
        let e = load_err(&dir).to_string();
        assert!(
            e.contains("encoder.layer.1.attention.output.dense.weight")
                && e.contains(&format!("holds {shown} at flat index 7")),
            "{e}"
        );
    }

    // An F64 value past f32's range loads on the f64 reference, and is refused by name on an
    // f32 backend, where it would be an infinity.
    let mut huge = full.clone();
    let name = "bert.encoder.layer.0.attention.self.query.weight";
    huge.get_mut(name).unwrap().1[3] = -1e300;
    let dir = tmp.path().join("past-f32");
    write_checkpoint(&dir, &tiny_config_json(2), &huge, Dtype::F64, false);
    let ck = Checkpoint::open(&dir).unwrap();
    assert!(BertClassifier::from_checkpoint(&ck, &CpuBackend::f64(), 2, 0).is_ok());
    let e = BertClassifier::from_checkpoint(&ck, &CpuBackend::f32(), 2, 0)
        .expect_err("-1e300 in f32")
        .to_string();
    assert!(
        e.contains("model.safetensors")
            && e.contains(name.trim_start_matches("bert."))
            && e.contains("holds -1e300 at flat index 3, beyond the range of f32"),
        "{e}"
    );

    // Integer data where floats belong.
    let dir = tmp.path().join("int");
    write_checkpoint(&dir, &tiny_config_json(2), &full, Dtype::I64, false);
    let e = load_err(&dir).to_string();
    assert!(e.contains("I64") && e.contains("expected F32"), "{e}");
}

#[test]
fn broken_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = tiny_bert::tensors(&tiny_bert::config(2), 5);

    // A weights file linked to a device that never ends is refused, not read until memory
    // runs out.
    let dir = tmp.path().join("endless");
    write_checkpoint(&dir, &tiny_config_json(2), &tensors, Dtype::F32, false);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("is a device, not a file"),
        "{e}"
    );

    let dir = tmp.path().join("bad-json");
    write_checkpoint(&dir, "{ \"hidden_size\": 15,", &tensors, Dtype::F32, false);
    let e = load_err(&dir);
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("config.json"),
        "{e}"
    );

    // A config that is not UTF-8 names the line and the byte.
    let dir = tmp.path().join("latin1");
    write_checkpoint(&dir, &tiny_config_json(2), &tensors, Dtype::F32, false);
    let mut bytes = tiny_config_json(2).into_bytes();
    let at = bytes.iter().position(|&b| b == b'\n').unwrap() + 3;
    bytes.insert(at, 0xe9);
    std::fs::write(dir.join("config.json"), bytes).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("config.json") && e.contains("line 2, byte 3") && e.contains("0xe9"),
        "{e}"
    );

    let dir = tmp.path().join("no-field");
    write_checkpoint(
        &dir,
        &tiny_config_json(2).replace("\"intermediate_size\": 13,", ""),
        &tensors,
        Dtype::F32,
        false,
    );
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("config.json") && e.contains("intermediate_size"),
        "{e}"
    );

    let dir = tmp.path().join("tanh-gelu");
    write_checkpoint(
        &dir,
        &tiny_config_json(2).replace("\"gelu\"", "\"gelu_new\""),
        &tensors,
        Dtype::F32,
        false,
    );
    let e = load_err(&dir).to_string();
    assert!(e.contains("gelu_new"), "{e}");

    let dir = tmp.path().join("heads");
    write_checkpoint(
        &dir,
        &tiny_config_json(2).replace("\"num_attention_heads\": 3", "\"num_attention_heads\": 4"),
        &tensors,
        Dtype::F32,
        false,
    );
    let e = load_err(&dir).to_string();
    assert!(e.contains("not divisible"), "{e}");

    let dir = tmp.path().join("corrupt");
    write_checkpoint(&dir, &tiny_config_json(2), &tensors, Dtype::F32, false);
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("model.safetensors"),
        "{e}"
    );

    // A header entry that does not fit the data: the tensor is named, whether its shape
    // needs other bytes than its range holds or its range runs past the end.
    let good = {
        let dir = tmp.path().join("header-source");
        write_checkpoint(&dir, &tiny_config_json(2), &tensors, Dtype::F32, false);
        std::fs::read(dir.join("model.safetensors")).unwrap()
    };
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&good[8..8 + header_len]).unwrap();
    let data = &good[8 + header_len..];
    // The load error of the checkpoint with `header` as its safetensors header.
    let error_with_header = |name: &str, header: &[u8]| {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(data);
        let dir = tmp.path().join(name);
        write_checkpoint(&dir, &tiny_config_json(2), &tensors, Dtype::F32, false);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        load_err(&dir).to_string()
    };
    type Edit = fn(&mut serde_json::Value, usize);
    let edits: [(&str, Edit, &str); 5] = [
        (
            "unknown-dtype",
            |t, _| t["dtype"] = serde_json::json!("Q9"),
            "unknown dtype \"Q9\"",
        ),
        (
            "negative-shape",
            |t, _| t["shape"] = serde_json::json!([-1]),
            "is not a list of sizes",
        ),
        (
            "huge-shape",
            |t, _| t["shape"] = serde_json::json!([1u64 << 62, 1u64 << 62]),
            "too large",
        ),
        (
            "misshapen-header",
            |t, _| t["shape"] = serde_json::json!([15, 14]),
            "need 840 bytes",
        ),
        (
            "offset-past-end",
            |t, len| t["data_offsets"] = serde_json::json!([len, len + 60]),
            "lies outside",
        ),
    ];
    for (name, edit, needle) in edits {
        let mut h = header.clone();
        edit(h.get_mut("pooler.dense.bias").unwrap(), data.len());
        let e = error_with_header(name, &serde_json::to_vec(&h).unwrap());
        assert!(
            e.contains("model.safetensors")
                && e.contains("`pooler.dense.bias`")
                && e.contains(needle),
            "{name}: {e}"
        );
    }

    // An entry listed twice (a JSON map keeps one), or left out: said so, not blamed on a
    // neighbour's offsets.
    // The later entry wins in a JSON map: here one with another tensor's bytes.
    let mut moved = header["pooler.dense.bias"].clone();
    moved["data_offsets"] = serde_json::json!([0, 60]);
    let whole = serde_json::to_string(&header).unwrap();
    let twice = format!(
        "{},\"pooler.dense.bias\":{moved}}}",
        &whole[..whole.len() - 1]
    );
    let mut left_out = header.clone();
    left_out.remove("pooler.dense.bias");
    for (name, text, needle) in [
        (
            "twice",
            twice,
            "the header lists tensor `pooler.dense.bias` twice",
        ),
        (
            "left-out",
            serde_json::to_string(&left_out).unwrap(),
            "belong to no tensor in the header",
        ),
    ] {
        let e = error_with_header(name, text.as_bytes());
        assert!(
            e.contains("model.safetensors") && e.contains(needle),
            "{name}: {e}"
        );
    }

    // A folder under the config's name, and layer tensors with a hole in their numbers.
    let dir = tmp.path().join("config-folder");
    write_checkpoint(&dir, &tiny_config_json(2), &tensors, Dtype::F32, false);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::fs::create_dir(dir.join("config.json")).unwrap();
    let e = load_err(&dir).to_string();
    assert!(e.contains("config.json here is not a file"), "{e}");
    let dir = tmp.path().join("layer-hole");
    let mut holed = tensors.clone();
    let layer_one: Vec<String> = holed
        .keys()
        .filter(|n| n.contains("encoder.layer.1."))
        .cloned()
        .collect();
    for name in layer_one {
        let t = holed.remove(&name).unwrap();
        holed.insert(name.replace("layer.1.", "layer.4."), t);
    }
    write_checkpoint(&dir, &tiny_config_json(2), &holed, Dtype::F32, false);
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("holds encoder layers 0, 4 (`encoder.layer.N`), not one run from 0 but config.json's `num_hidden_layers` is 2"),
        "{e}"
    );

    let dir = tmp.path().join("no-weights");
    write_checkpoint(&dir, &tiny_config_json(2), &tensors, Dtype::F32, false);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("model.safetensors"),
        "{e}"
    );
    // The OS's words are in the message; a reporter that also walks `source()` must not
    // print them a second time.
    assert!(std::error::Error::source(&e).is_none(), "{e}");

    let e = load_err(&tmp.path().join("does-not-exist"));
    assert!(e.to_string().contains("does-not-exist"), "{e}");
    let e = load_err(tmp.path());
    assert!(e.to_string().contains("no config.json"), "{e}");
}

/// Configs whose tensor names may match BERT's but whose forward is another: other model
/// families (ALBERT shares its layers' weights and projects its embeddings, Funnel pools
/// its sequence; a RoBERTa without positions, a DistilBERT with a SiLU feed-forward)
/// and causal decoders. Each is refused
/// naming the field, before any tensor is read.
#[test]
fn other_model_families_and_decoders_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = tiny_bert::tensors(&tiny_bert::config(2), 5);
    let bert = tiny_config_json(2);
    // DistilBERT's own keys are read (and named in messages).
    let distilbert = r#"{"model_type": "distilbert", "vocab_size": 29, "dim": 15, "n_layers": 2,
        "n_heads": 3, "hidden_dim": 13, "max_position_embeddings": 11, "activation": "silu"}"#;
    let cases: [(&str, String, &str); 18] = [
        (
            "unknown-problem",
            bert.replace(r#""gelu","#, r#""gelu", "problem_type": "ranking","#),
            "`problem_type` is `ranking`",
        ),
        (
            "old-roberta",
            bert.replace(r#""model_type": "bert","#, "")
                .replace("BertModel", "RobertaForMaskedLM"),
            "`architectures` (RobertaForMaskedLM) names no BERT class",
        ),
        (
            "roberta-without-positions",
            bert.replace(r#""bert""#, r#""roberta", "pad_token_id": 20"#),
            "`pad_token_id` 20 leaves no RoBERTa positions",
        ),
        (
            "pad-beyond-vocab",
            bert.replace(r#""bert""#, r#""bert", "pad_token_id": 99999"#),
            "`pad_token_id` 99999 is not below `vocab_size` 29",
        ),
        (
            "deberta",
            bert.replace(r#""bert""#, r#""deberta""#),
            r#"`model_type` is "deberta""#,
        ),
        (
            "albert",
            bert.replace(r#""bert""#, r#""albert""#),
            r#"`model_type` is "albert""#,
        ),
        (
            "distilbert",
            distilbert.to_string(),
            "`activation` is `silu`",
        ),
        (
            "distilbert-heads",
            distilbert.replace(r#""n_heads": 3"#, r#""n_heads": 4"#),
            "`dim` 15 is not divisible by `n_heads` 4",
        ),
        (
            "funnel",
            bert.replace(r#""bert""#, r#""funnel""#),
            r#"`model_type` is "funnel""#,
        ),
        (
            "decoder",
            bert.replace(r#""gelu","#, r#""gelu", "is_decoder": true,"#),
            "`is_decoder` is true",
        ),
        (
            "classifier-dropout",
            bert.replace(r#""gelu","#, r#""gelu", "classifier_dropout": 1.0,"#),
            "`classifier_dropout` must be in [0, 1), got 1",
        ),
        (
            "initializer-range",
            bert.replace(r#""gelu","#, r#""gelu", "initializer_range": -0.02,"#),
            "`initializer_range` must be positive",
        ),
        (
            "layer-norm-eps-huge",
            bert.replace("\"layer_norm_eps\": 1e-12", "\"layer_norm_eps\": 1e300"),
            "`layer_norm_eps` must be in (0, 1], got 1e300",
        ),
        (
            "model-type-number",
            bert.replace(r#""bert""#, "7"),
            "`model_type` is 7",
        ),
        (
            "gelu-tanh",
            bert.replace(r#""gelu","#, r#""gelu_new","#),
            "`hidden_act` is `gelu_new`",
        ),
        // serde alone names neither field: the message must.
        (
            "heads-as-text",
            bert.replace(r#""gelu","#, r#""gelu", "num_attention_heads": "3","#),
            r#"`num_attention_heads` is "3""#,
        ),
        (
            "null-segments",
            bert.replace(r#""gelu","#, r#""gelu", "type_vocab_size": null,"#),
            "`type_vocab_size` is null",
        ),
        // A missing field is serde's to name; no field present is to blame.
        (
            "no-intermediate",
            bert.replace(r#""intermediate_size": 13,"#, ""),
            "invalid BERT config: missing field `intermediate_size`",
        ),
    ];
    for (name, config, needle) in cases {
        let dir = tmp.path().join(name);
        write_checkpoint(&dir, &config, &tensors, Dtype::F32, true);
        let e = load_err(&dir);
        assert!(
            matches!(e, Error::Format { .. })
                && e.to_string().contains("config.json")
                && e.to_string().contains(needle),
            "{name}: {e}"
        );
    }
    // Fields that change nothing in BERT's forward are read or ignored, not refused; a null
    // `id2label` is no names, and `gelu_python` is transformers' erf GELU under another name.
    let dir = tmp.path().join("decoder-false");
    let config = bert.replace(
        r#""gelu","#,
        r#""gelu_python", "is_decoder": false, "classifier_dropout": null, "initializer_range": 0.05,
            "problem_type": "single_label_classification", "id2label": null,"#,
    );
    write_checkpoint(&dir, &config, &tensors, Dtype::F32, true);
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.config.classifier_dropout_or(0.1), 0.1);
    assert_eq!(ck.config.initializer_range, 0.05);
}

/// A fine-tuned head is used as it is, and must agree with config.json: its `problem_type`
/// against its number of outputs, its `id2label` read for names only where they are strings.
#[test]
fn a_fine_tuned_head_agrees_with_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    let cpu = CpuBackend::f64();
    let with_head = |rows: usize| {
        let mut t = tiny_bert::tensors(&tiny_bert::config(2), 5);
        let weights: Vec<f64> = (0..rows * 15).map(|i| (i as f64).sin() * 0.1).collect();
        t.insert("classifier.weight".into(), (vec![rows, 15], weights));
        t.insert("classifier.bias".into(), (vec![rows], vec![0.5; rows]));
        t
    };
    let open = |name: &str, extra: &str, rows: usize| {
        let dir = tmp.path().join(name);
        let config = tiny_config_json(2).replace(r#""gelu","#, &format!(r#""gelu", {extra}"#));
        write_checkpoint(&dir, &config, &with_head(rows), Dtype::F64, true);
        let ck = Checkpoint::open(&dir).unwrap();
        let model = BertClassifier::from_fine_tuned(&ck, &cpu);
        (ck, model)
    };
    let (ck, model) = open(
        "named",
        r#""id2label": {"0": "neg", "1": "pos", "2": "mixed"},"#,
        3,
    );
    let model = model.unwrap();
    assert_eq!(model.num_labels(), 3);
    assert!(model.params().iter().all(|p| !p.trainable));
    assert_eq!(host(&model.classifier.bias.value), vec![0.5; 3]);
    assert_eq!(
        ck.config.class_names(3),
        Some(vec!["neg".into(), "pos".into(), "mixed".into()])
    );
    // transformers accepts any value in id2label; only strings name classes.
    // Where id2label names no classes, the reason is there for a note (placeholders and
    // an absent id2label need none).
    let (ck, model) = open("numbers", r#""id2label": {"0": 0, "1": 1},"#, 2);
    assert!(model.is_ok() && ck.config.class_names(2).is_none());
    let problem = ck.config.class_names_problem(2).unwrap();
    assert!(
        problem.contains("id 0 is named 0, not a string"),
        "{problem}"
    );
    let (ck, _) = open(
        "placeholders",
        r#""id2label": {"0": "LABEL_0", "1": "LABEL_1"},"#,
        2,
    );
    assert!(ck.config.class_names(2).is_none());
    assert_eq!(ck.config.class_names_problem(2), None);
    let (ck, _) = open("repeated", r#""id2label": {"0": "x", "1": "x"},"#, 2);
    assert!(ck.config.class_names(2).is_none());
    assert!(ck
        .config
        .class_names_problem(2)
        .unwrap()
        .contains("ids 0 and 1 `x`"));
    let (ck, _) = open("short", r#""id2label": {"0": "neg"},"#, 2);
    let problem = ck.config.class_names_problem(2).unwrap();
    assert!(
        problem.contains("1 entry for a head of 2 outputs"),
        "{problem}"
    );

    for (name, extra, rows) in [
        ("regression-2", r#""problem_type": "regression","#, 2),
        (
            "single-label-1",
            r#""problem_type": "single_label_classification","#,
            1,
        ),
    ] {
        let (ck, model) = open(name, extra, rows);
        let e = model.expect_err(name).to_string();
        assert!(
            e.contains("config.json") && e.contains("`problem_type`") && e.contains("output"),
            "{name}: {e}"
        );
        // A regression of two targets is no start for a two-class head either.
        if rows == 2 {
            assert_eq!(ck.classifier_outputs(), None);
        }
    }
    // A multi-label head (a sigmoid per class) loads as one, and a run on the checkpoint
    // starts from it; a plain head is not one.
    let (ck, model) = open(
        "multi-label",
        r#""problem_type": "multi_label_classification","#,
        2,
    );
    assert!(ck.is_multi_label());
    assert!(model.expect("multi-label").is_multi_label());
    assert_eq!(ck.classifier_outputs(), Some(2));
    let own = BertClassifier::from_checkpoint(&ck, &cpu, 2, 7).unwrap();
    assert_ne!(host(&own.classifier.bias.value), vec![0.0; 2]);
    // One output under multi-label is a single yes-or-no class, which no spafit head is.
    let (_, model) = open(
        "multi-label-1",
        r#""problem_type": "multi_label_classification","#,
        1,
    );
    let e = model.expect_err("multi-label-1").to_string();
    assert!(
        e.contains("multi_label_classification") && e.contains("1 output"),
        "{e}"
    );
    let (plain, model) = open("single-label-2", "", 2);
    assert!(!plain.is_multi_label() && !model.unwrap().is_multi_label());
    let dir = tmp.path().join("no-head");
    write_checkpoint(
        &dir,
        &tiny_config_json(2),
        &tiny_bert::tensors(&tiny_bert::config(2), 5),
        Dtype::F64,
        true,
    );
    let e = BertClassifier::from_fine_tuned(&Checkpoint::open(&dir).unwrap(), &cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no classifier head"), "{e}");

    // A head in part, or in shapes that do not fit together, is a damaged file: refused for
    // training too (it had started from a fresh head without a word), naming the tensors.
    let damaged = |name: &str, edit: &dyn Fn(&mut Tensors)| {
        let dir = tmp.path().join(name);
        let mut t = with_head(3);
        edit(&mut t);
        write_checkpoint(&dir, &tiny_config_json(2), &t, Dtype::F64, true);
        let ck = Checkpoint::open(&dir).unwrap();
        BertClassifier::from_checkpoint(&ck, &cpu, 2, 0)
            .err()
            .unwrap_or_else(|| panic!("{name} loaded"))
            .to_string()
    };
    let e = damaged("no-bias", &|t| {
        t.remove("classifier.bias");
    });
    assert!(
        e.contains("`classifier.weight` [3, 15] is there but `classifier.bias` is missing"),
        "{e}"
    );
    let e = damaged("no-weight", &|t| {
        t.remove("classifier.weight");
    });
    assert!(e.contains("`classifier.weight` is missing"), "{e}");
    // Read as a fine-tuned checkpoint (eval, predict) it is named the same way, not as a
    // checkpoint never fine-tuned.
    let e = BertClassifier::from_fine_tuned(
        &Checkpoint::open(tmp.path().join("no-weight")).unwrap(),
        &cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("`classifier.bias` [3] is there but `classifier.weight` is missing"),
        "{e}"
    );
    let e = damaged("rows", &|t| {
        t.insert("classifier.bias".into(), (vec![2], vec![0.0; 2]));
    });
    assert!(
        e.contains("does not fit together") && e.contains("[3, 15]") && e.contains("[2]"),
        "{e}"
    );
    // An adapter brings its own head: the base's damaged one does not keep it from loading
    // (the same encoder, so the same base identity).
    let clean = tmp.path().join("clean");
    let encoder = tiny_bert::tensors(&tiny_bert::config(2), 5);
    write_checkpoint(&clean, &tiny_config_json(2), &encoder, Dtype::F64, true);
    let clean = Checkpoint::open(&clean).unwrap();
    let plan = spafit::peft::PeftPlan::new(
        &spafit::peft::PeftConfig::new(spafit::peft::Method::BitFit),
        2,
    )
    .unwrap();
    let mut model = BertClassifier::from_checkpoint(&clean, &cpu, 2, 0).unwrap();
    model
        .apply_plan(&plan, &mut spafit::peft::peft_lora_init(&cpu, 0))
        .unwrap();
    let adapter = tmp.path().join("adapter");
    spafit::adapter::save_adapter(
        &adapter,
        &cpu,
        &model,
        &plan,
        &clean.weights,
        None,
        spafit::adapter::TrainingInputs {
            text_pairs: Some(false),
            max_len: Some(8),
        },
    )
    .unwrap();
    let damaged_base = Checkpoint::open(tmp.path().join("no-bias")).unwrap();
    let (loaded, _) = spafit::adapter::load_adapter(&adapter, &damaged_base, &cpu).unwrap();
    assert_eq!(loaded.num_labels(), 2);
    // A whole head of another size is not damaged: a fresh head of the data's size.
    let dir = tmp.path().join("three");
    write_checkpoint(&dir, &tiny_config_json(2), &with_head(3), Dtype::F64, true);
    let model = BertClassifier::from_checkpoint(&Checkpoint::open(&dir).unwrap(), &cpu, 2, 0);
    assert_eq!(model.unwrap().num_labels(), 2);
}

/// Writes `tensors` as `model-0000i-of-0000n.safetensors` shards (tensor k in shard k mod n)
/// with the index transformers writes beside them; returns the weight map.
fn write_shards(dir: &Path, config: &str, tensors: &Tensors, n: usize) -> BTreeMap<String, String> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let file = |i: usize| format!("model-{:05}-of-{n:05}.safetensors", i + 1);
    let mut map = BTreeMap::new();
    for i in 0..n {
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, (name, (shape, v)))| (name.clone(), shape.clone(), encode(Dtype::F32, v)))
            .collect();
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(name, shape, b)| {
                map.insert(name.clone(), file(i));
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize_to_file(views, None, &dir.join(file(i))).unwrap();
    }
    write_index(dir, &map);
    map
}

fn write_index(dir: &Path, map: &BTreeMap<String, String>) {
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// A checkpoint saved in shards (`model.safetensors.index.json`, as transformers writes
/// models above its shard size) loads the same tensors as one file, and a broken index or
/// shard is named.
#[test]
fn sharded_checkpoints_load_as_one_file_does() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = tiny_bert::tensors(&tiny_bert::config(2), 5);
    let config = tiny_config_json(2);
    let one = tmp.path().join("one");
    write_checkpoint(&one, &config, &tensors, Dtype::F32, true);
    let sharded = tmp.path().join("sharded");
    let map = write_shards(&sharded, &config, &tensors, 3);

    let cpu = CpuBackend::f64();
    let load = |dir: &Path| {
        let ck = Checkpoint::open(dir).unwrap();
        let model = BertClassifier::from_checkpoint(&ck, &cpu, 2, 0).unwrap();
        let values: Vec<(String, Vec<f64>)> = model
            .params()
            .iter()
            .map(|p| (p.name.clone(), host(&p.value)))
            .collect();
        (ck.weights.sha256().unwrap().to_string(), values)
    };
    let (one_sha, one_values) = load(&one);
    let (sharded_sha, sharded_values) = load(&sharded);
    assert_eq!(sharded_values, one_values);
    assert_ne!(sharded_sha, one_sha);
    // The identity does not depend on how the index is laid out, only on the shards.
    let text = std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        text.replace('\n', "").replace("  ", ""),
    )
    .unwrap();
    assert_eq!(load(&sharded).0, sharded_sha);

    let broken = |name: &str, edit: &dyn Fn(&Path, &mut BTreeMap<String, String>)| {
        let dir = tmp.path().join(name);
        let mut map = write_shards(&dir, &config, &tensors, 3);
        edit(&dir, &mut map);
        write_index(&dir, &map);
        load_err(&dir).to_string()
    };
    let probe = "bert.pooler.dense.weight";
    let home = map[probe].clone();
    let elsewhere = map.values().find(|f| **f != home).unwrap().clone();
    let e = broken("misplaced", &|_, m| {
        m.insert(probe.into(), elsewhere.clone());
    });
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains(&format!(
                "places `{probe}` in `{elsewhere}`, which does not hold it"
            )),
        "{e}"
    );
    let e = broken("missing-shard", &|d, _| {
        std::fs::remove_file(d.join(&home)).unwrap();
    });
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains(&format!(
                "names the shard `{home}`, which is not beside the index"
            )),
        "{e}"
    );
    let e = broken("folder-shard", &|d, _| {
        std::fs::remove_file(d.join(&home)).unwrap();
        std::fs::create_dir(d.join(&home)).unwrap();
    });
    assert!(
        e.contains(&home) && e.contains("a folder where a safetensors file should be"),
        "{e}"
    );
    // The checkpoint's config.json given for its folder names the folder to give.
    let dir = tmp.path().join("whole");
    write_shards(&dir, &config, &tensors, 2);
    let e = Checkpoint::open(dir.join("config.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("a file, not a checkpoint folder"), "{e}");
    let e = broken("outside", &|_, m| {
        m.insert(probe.into(), format!("../one/{home}"));
    });
    assert!(e.contains("beside the index"), "{e}");
    let e = broken("unlisted-tensor", &|_, m| {
        m.insert("bert.extra.weight".into(), home.clone());
    });
    assert!(e.contains("`bert.extra.weight`"), "{e}");
    let e = broken("empty-map", &|_, m| m.clear());
    assert!(e.contains("`weight_map` is empty"), "{e}");
    let dir = tmp.path().join("no-map");
    write_shards(&dir, &config, &tensors, 2);
    std::fs::write(dir.join("model.safetensors.index.json"), "{}").unwrap();
    let e = load_err(&dir).to_string();
    assert!(e.contains("no `weight_map`"), "{e}");
    // A tensor in two shards: which copy would load is undefined, so neither does.
    let dir = tmp.path().join("twice");
    let map = write_shards(&dir, &config, &tensors, 2);
    let first = map.values().next().unwrap().clone();
    let second = map.values().find(|f| **f != first).unwrap().clone();
    let mut in_second: Tensors = tensors
        .iter()
        .filter(|(n, _)| map[*n] == second)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let dup = map.iter().find(|(_, f)| **f == first).unwrap().0.clone();
    in_second.insert(dup.clone(), tensors[&dup].clone());
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = in_second
        .iter()
        .map(|(n, (shape, v))| (n.clone(), shape.clone(), encode(Dtype::F32, v)))
        .collect();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join(&second)).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains(&format!("`{dup}` is in both")) && e.contains(&first) && e.contains(&second),
        "{e}"
    );

    // Only a pickle: the message says what to do.
    let dir = tmp.path().join("pickle");
    write_checkpoint(&dir, &config, &tensors, Dtype::F32, true);
    std::fs::rename(dir.join("model.safetensors"), dir.join("pytorch_model.bin")).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("pytorch_model.bin"),
        "{e}"
    );
}

/// The base identity adapters record (`encoder_sha256`) is that of the encoder's tensors: the
/// same tensors saved under the other naming, in shards, under TensorFlow-era LayerNorm names,
/// or beside another head give the same identity; one changed value or another dtype does not.
#[test]
fn the_encoder_identity_follows_the_tensors_not_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = tiny_bert::tensors(&tiny_bert::config(2), 5);
    let config = tiny_config_json(2);
    let identity = |name: &str, write: &dyn Fn(&Path)| {
        let dir = tmp.path().join(name);
        write(&dir);
        let ck = Checkpoint::open(&dir).unwrap();
        let file = ck.weights.sha256().unwrap().to_string();
        (file, ck.weights.encoder_sha256().unwrap().to_string())
    };
    let (file, encoder) = identity("one", &|d| {
        write_checkpoint(d, &config, &tensors, Dtype::F32, true)
    });
    let same = |name: &str, write: &dyn Fn(&Path)| {
        let (other_file, other_encoder) = identity(name, write);
        assert_ne!(other_file, file, "{name}: the file is another");
        assert_eq!(other_encoder, encoder, "{name}: the encoder is the same");
    };
    same("unprefixed", &|d| {
        write_checkpoint(d, &config, &tensors, Dtype::F32, false)
    });
    same("sharded", &|d| {
        write_shards(d, &config, &tensors, 3);
    });
    let legacy: Tensors = tensors
        .iter()
        .map(|(n, v)| (n.replace("LayerNorm.weight", "LayerNorm.gamma"), v.clone()))
        .collect();
    same("legacy", &|d| {
        write_checkpoint(d, &config, &legacy, Dtype::F32, true)
    });
    let mut headed = tensors.clone();
    headed.insert("classifier.weight".into(), (vec![2, 15], vec![0.25; 30]));
    headed.insert("classifier.bias".into(), (vec![2], vec![0.0; 2]));
    same("with-a-head", &|d| {
        write_checkpoint(d, &config, &headed, Dtype::F32, true)
    });

    let other = |name: &str, write: &dyn Fn(&Path)| {
        assert_ne!(identity(name, write).1, encoder, "{name}: another encoder");
    };
    let mut nudged = tensors.clone();
    let (_, values) = nudged
        .get_mut("bert.encoder.layer.1.attention.self.value.bias")
        .unwrap();
    values[3] = f64::from(f32::from_bits((values[3] as f32).to_bits() + 1));
    other("one-value-nudged", &|d| {
        write_checkpoint(d, &config, &nudged, Dtype::F32, true)
    });
    other("bf16", &|d| {
        write_checkpoint(d, &config, &tensors, Dtype::BF16, true)
    });
}

/// A sentence-transformers folder of the older layout (the model in `0_Transformer/`, named
/// by `modules.json`) resolves to that folder, here and in a hub cache snapshot; a
/// `modules.json` whose Transformer path leaves the folder, or names a folder without a
/// config.json, is not followed.
#[test]
fn a_sentence_transformers_folder_resolves_to_its_transformer_module() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = tiny_bert::tensors(&tiny_bert::config(2), 5);
    let modules = |path: &str| {
        serde_json::json!([
            {"idx": 0, "name": "0", "path": path, "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
        ])
        .to_string()
    };
    let st = tmp.path().join("hub/models--acme--st/snapshots/abc");
    write_checkpoint(
        &st.join("0_Transformer"),
        &tiny_config_json(2),
        &tensors,
        Dtype::F32,
        true,
    );
    std::fs::write(st.join("modules.json"), modules("0_Transformer")).unwrap();
    let inner = st.join("0_Transformer");
    let caches = vec![tmp.path().join("hub")];
    assert_eq!(resolve_with_caches(&st, &caches).unwrap(), inner);
    assert_eq!(
        resolve_with_caches(Path::new("acme/st"), &caches).unwrap(),
        inner
    );
    let ck = Checkpoint::open(&st).unwrap();
    assert_eq!(ck.config.num_hidden_layers, 2);
    // A model beside the folder, which `../0_Transformer` would reach.
    write_checkpoint(
        &tmp.path().join("0_Transformer"),
        &tiny_config_json(2),
        &tensors,
        Dtype::F32,
        true,
    );
    for (name, path) in [
        ("escape", "../0_Transformer"),
        ("empty-module", "1_Pooling"),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        std::fs::write(dir.join("modules.json"), modules(path)).unwrap();
        let e = resolve_with_caches(&dir, &[]).unwrap_err().to_string();
        assert!(e.contains("no config.json"), "{name}: {e}");
    }
}

#[test]
fn hugging_face_hub_cache_layout_resolves_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = tiny_bert::tensors(&tiny_bert::config(2), 5);
    let repo = tmp.path().join("hub/models--acme--tiny-bert");
    let snap = repo.join("snapshots/0123abcd");
    write_checkpoint(&snap, &tiny_config_json(2), &tensors, Dtype::F32, false);
    // A second, stale snapshot: refs/main decides.
    write_checkpoint(
        &repo.join("snapshots/ffff0000"),
        &tiny_config_json(2),
        &tensors,
        Dtype::F32,
        false,
    );
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd\n").unwrap();

    let caches = vec![tmp.path().join("elsewhere"), tmp.path().join("hub")];
    assert_eq!(
        resolve_with_caches(Path::new("acme/tiny-bert"), &caches).unwrap(),
        snap
    );
    assert_eq!(resolve_with_caches(&repo, &caches).unwrap(), snap);
    assert_eq!(resolve_with_caches(&snap, &caches).unwrap(), snap);
    let e = resolve_with_caches(Path::new("acme/other-model"), &caches).unwrap_err();
    assert!(e.to_string().contains("acme/other-model"), "{e}");
    // An empty path is said to be one (joined with config.json it would mean the working
    // directory).
    let e = resolve_with_caches(Path::new(""), &caches).unwrap_err();
    assert!(e.to_string().contains("the path is empty"), "{e}");

    // The oldest models have no organisation: `bert-base-uncased` is
    // `models--bert-base-uncased`.
    let bare = tmp
        .path()
        .join("hub/models--tiny-bert-uncased/snapshots/42");
    write_checkpoint(&bare, &tiny_config_json(2), &tensors, Dtype::F32, false);
    assert_eq!(
        resolve_with_caches(Path::new("tiny-bert-uncased"), &caches).unwrap(),
        bare
    );

    // refs/main naming a snapshot that is gone, or whose config.json is a dangling link
    // (an interrupted download), says so rather than falling back to another revision.
    std::fs::write(repo.join("refs/main"), "deadbeef\n").unwrap();
    let e = resolve_with_caches(&repo, &caches).unwrap_err().to_string();
    assert!(
        e.contains("refs/main names snapshot `deadbeef`, which does not exist"),
        "{e}"
    );
    let dangling = repo.join("snapshots/deadbeef");
    std::fs::create_dir_all(&dangling).unwrap();
    std::os::unix::fs::symlink("../../blobs/missing", dangling.join("config.json")).unwrap();
    let e = resolve_with_caches(&repo, &caches).unwrap_err().to_string();
    assert!(e.contains("link to a missing blob"), "{e}");

    // A weights link whose blob is missing says so.
    let broken = tmp.path().join("broken-weights");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), tiny_config_json(2)).unwrap();
    std::os::unix::fs::symlink("../blobs/gone", broken.join("model.safetensors")).unwrap();
    let e = Checkpoint::open(&broken)
        .expect_err("a dangling link")
        .to_string();
    assert!(e.contains("a link to a file that does not exist"), "{e}");

    // An empty ref names no revision: as if there were none.
    std::fs::write(repo.join("refs/main"), "\n").unwrap();
    let e = resolve_with_caches(&repo, &caches).unwrap_err();
    assert!(e.to_string().contains("several snapshots"), "{e}");
    std::fs::remove_file(repo.join("refs/main")).unwrap();
    let e = resolve_with_caches(&repo, &caches).unwrap_err();
    assert!(e.to_string().contains("several snapshots"), "{e}");

    // A ref that leaves the snapshots folder is refused.
    std::fs::write(repo.join("refs/main"), "../../models--other/snapshots/1\n").unwrap();
    let e = resolve_with_caches(&repo, &caches).unwrap_err().to_string();
    assert!(e.contains("is not a snapshot name"), "{e}");

    // The cache folder is chosen as huggingface_hub chooses it: the first variable set.
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        }
    };
    let roots = |vars: &'static [(&'static str, &'static str)]| {
        spafit::checkpoint::hub_cache_roots(&env(vars))
    };
    assert_eq!(
        roots(&[
            ("HF_HUB_CACHE", "/hub"),
            ("HF_HOME", "/hf"),
            ("HOME", "/home/u")
        ]),
        [PathBuf::from("/hub")]
    );
    assert_eq!(
        roots(&[
            ("HUGGINGFACE_HUB_CACHE", "/legacy"),
            ("HF_HOME", "/hf"),
            ("HOME", "/home/u")
        ]),
        [PathBuf::from("/legacy")]
    );
    assert_eq!(
        roots(&[
            ("HF_HUB_CACHE", ""),
            ("HF_HOME", "~/hf"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HOME", "/home/u")
        ]),
        [PathBuf::from("/home/u/hf/hub")]
    );
    assert_eq!(
        roots(&[("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")]),
        [PathBuf::from("/xdg/huggingface/hub")]
    );
    assert_eq!(
        roots(&[("HOME", "/home/u")]),
        [PathBuf::from("/home/u/.cache/huggingface/hub")]
    );
    assert!(roots(&[]).is_empty());
}

fn ck_minilm_tokenizer(max_len: usize) -> spafit::text::TextTokenizer {
    Checkpoint::open(common::minilm_dir())
        .unwrap()
        .tokenizer(max_len)
        .unwrap()
}

#[test]
fn tokenizer_must_fit_the_vocabulary() {
    let real = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(
        real.is_file(),
        "{} is required: run scripts/fetch_assets.sh",
        real.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let tensors = tiny_bert::tensors(&tiny_bert::config(2), 5);
    write_checkpoint(
        tmp.path(),
        &tiny_config_json(2),
        &tensors,
        Dtype::F32,
        false,
    );
    // A folder under the tokenizer's name is said to be one, not "not found".
    std::fs::create_dir(tmp.path().join("tokenizer.json")).unwrap();
    let e = Checkpoint::open(tmp.path())
        .unwrap()
        .tokenizer(8)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("tokenizer.json: is a folder, where the tokenizer's file belongs"),
        "{e}"
    );
    std::fs::remove_dir(tmp.path().join("tokenizer.json")).unwrap();
    std::fs::copy(&real, tmp.path().join("tokenizer.json")).unwrap();
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let e = ck
        .tokenizer(8)
        .expect_err("30522 tokens cannot index 29 rows");
    assert!(
        e.to_string().contains("30522") && e.to_string().contains("29"),
        "{e}"
    );
    let e = ck
        .tokenizer(64)
        .expect_err("longer than the position table");
    assert!(e.to_string().contains("11 positions"), "{e}");

    // As many tokens as the table has rows, but one id beyond it: the ids must fit, not
    // only their count.
    let big = tempfile::tempdir().unwrap();
    write_checkpoint(
        big.path(),
        &tiny_config_json(2).replace("\"vocab_size\": 29", "\"vocab_size\": 30522"),
        &tensors,
        Dtype::F32,
        false,
    );
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&real).unwrap()).unwrap();
    json["model"]["vocab"]["[unused5]"] = serde_json::json!(99_999);
    std::fs::write(big.path().join("tokenizer.json"), json.to_string()).unwrap();
    let e = Checkpoint::open(big.path())
        .unwrap()
        .tokenizer(8)
        .expect_err("id 99999 cannot index 30522 rows");
    assert!(
        e.to_string().contains("[unused5]") && e.to_string().contains("99999"),
        "{e}"
    );
    // Ids that come from the post-processor or the padding, and segment ids of a pair:
    // transformers takes them from tokenizer.json only for a class other than BertTokenizer
    // (which rebuilds its own), so the config names one.
    std::fs::write(
        big.path().join("tokenizer_config.json"),
        r#"{"tokenizer_class": "PreTrainedTokenizerFast"}"#,
    )
    .unwrap();
    type TokenizerEdit = fn(&mut serde_json::Value);
    let edits: [(TokenizerEdit, &str); 2] = [
        (
            |j| j["post_processor"]["special_tokens"]["[CLS]"]["ids"] = serde_json::json!([99_999]),
            "token id 99999",
        ),
        (
            |j| j["padding"]["pad_id"] = serde_json::json!(88_888),
            "token id 88888",
        ),
    ];
    for (edit, needle) in edits {
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&real).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(big.path().join("tokenizer.json"), json.to_string()).unwrap();
        let e = Checkpoint::open(big.path())
            .unwrap()
            .tokenizer(8)
            .err()
            .unwrap_or_else(|| panic!("{needle}: accepted"));
        assert!(
            e.to_string().contains("tokenizer.json") && e.to_string().contains(needle),
            "{e}"
        );
    }

    // Segment ids beyond the model's type table: single sentences still encode, every
    // pair is refused naming both files. (The class gives the model segment ids only when
    // `model_input_names` asks for them; without, every pair would be segment 0.)
    std::fs::write(
        big.path().join("tokenizer_config.json"),
        r#"{"tokenizer_class": "PreTrainedTokenizerFast",
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}"#,
    )
    .unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&real).unwrap()).unwrap();
    json["post_processor"]["pair"][3]["Sequence"]["type_id"] = serde_json::json!(7);
    std::fs::write(big.path().join("tokenizer.json"), json.to_string()).unwrap();
    let tok = Checkpoint::open(big.path()).unwrap().tokenizer(8).unwrap();
    tok.encode(spafit::text::TextInput::Single("a sentence"))
        .unwrap();
    let e = tok
        .encode(spafit::text::TextInput::Pair("a", "b"))
        .expect_err("segment id 7 in a table of 2")
        .to_string();
    assert!(
        e.contains("segment (type) id 7")
            && e.contains("tokenizer.json")
            && e.contains("config.json")
            && e.contains("single sentences only"),
        "{e}"
    );
    // Too short for a pair's three special tokens, long enough for a sentence's two.
    let tok = ck_minilm_tokenizer(3);
    tok.encode(spafit::text::TextInput::Single("a sentence"))
        .unwrap();
    let e = tok
        .encode(spafit::text::TextInput::Pair("a", "b"))
        .expect_err("no room for a pair")
        .to_string();
    assert!(
        e.contains("--max-len") && e.contains("3 special tokens"),
        "{e}"
    );

    std::fs::write(tmp.path().join("tokenizer.json"), "{\"version\": \"1.0\"").unwrap();
    let e = ck.tokenizer(8).expect_err("broken tokenizer");
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("tokenizer.json"),
        "{e}"
    );

    let cfg = BertConfig::from_json(&tiny_config_json(2), Path::new("x/config.json")).unwrap();
    assert_eq!(cfg.num_hidden_layers, 2);
}

/// A `classifier` saved by another architecture is not a sequence classifier's head, whatever
/// its shape (`BertForMultipleChoice`'s one output would read as regression); a reused head is
/// lined up with the data's classes by name; and the model's output count is its head's.
#[test]
fn heads_follow_their_architecture_and_the_data_classes() {
    use spafit::data::TaskKind;
    use spafit::model::ClassAlignment;
    let tmp = tempfile::tempdir().unwrap();
    let cpu = CpuBackend::f64();
    let write = |name: &str, architecture: &str, extra: &str, rows: usize| {
        let mut t = tiny_bert::tensors(&tiny_bert::config(2), 5);
        let weights: Vec<f64> = (0..rows * 15).map(|i| (i as f64).sin() * 0.1).collect();
        let bias: Vec<f64> = (0..rows).map(|i| i as f64 + 0.5).collect();
        t.insert("classifier.weight".into(), (vec![rows, 15], weights));
        t.insert("classifier.bias".into(), (vec![rows], bias));
        let dir = tmp.path().join(name);
        let config = tiny_config_json(2)
            .replace("\"BertModel\"", &format!("\"{architecture}\""))
            .replace(r#""gelu","#, &format!(r#""gelu", {extra}"#));
        write_checkpoint(&dir, &config, &t, Dtype::F64, true);
        Checkpoint::open(&dir).unwrap()
    };

    for architecture in ["BertForMultipleChoice", "BertForTokenClassification"] {
        let ck = write(architecture, architecture, "", 1);
        assert_eq!(ck.foreign_head(), Some(architecture));
        assert_eq!(ck.classifier_outputs(), None);
        let e = BertClassifier::from_fine_tuned(&ck, &cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("config.json") && e.contains(architecture) && e.contains("--adapter"),
            "{e}"
        );
        // Training from it starts from a fresh head (bias 0), not from the other one.
        let model = BertClassifier::from_checkpoint(&ck, &cpu, 1, 0).unwrap();
        assert_eq!(host(&model.classifier.bias.value), vec![0.0]);
    }
    let ck = write("seq", "BertForSequenceClassification", "", 1);
    assert_eq!(ck.foreign_head(), None);
    let model = BertClassifier::from_fine_tuned(&ck, &cpu).unwrap();
    assert_eq!(host(&model.classifier.bias.value), vec![0.5]);

    // The checkpoint's classes by id are neg, pos, mixed.
    let named = r#""id2label": {"0": "neg", "1": "pos", "2": "mixed"},"#;
    let ck = write("named", "BertForSequenceClassification", named, 3);
    let classes = |names: &[&str]| TaskKind::Classification {
        labels: names.iter().map(|s| s.to_string()).collect(),
    };
    // What lining `ck`'s own head up with `kind` did, and the head's bias after it.
    let align_on = |ck: &Checkpoint, kind: &TaskKind| {
        let mut model = BertClassifier::from_fine_tuned(ck, &cpu).unwrap();
        let done = model.align_classes(ck, &cpu, kind).unwrap();
        (done, host(&model.classifier.bias.value))
    };
    let align = |kind: &TaskKind| align_on(&ck, kind);
    let (done, bias) = align(&classes(&["mixed", "neg", "pos"]));
    assert_eq!(
        done,
        ClassAlignment::Reordered {
            head_classes: vec!["neg".into(), "pos".into(), "mixed".into()]
        }
    );
    assert_eq!(bias, vec![2.5, 0.5, 1.5]);
    assert_eq!(
        align(&classes(&["neg", "pos", "mixed"])),
        (ClassAlignment::SameOrder, vec![0.5, 1.5, 2.5])
    );
    let (done, bias) = align(&classes(&["a", "b", "c"]));
    assert!(
        matches!(done, ClassAlignment::ByPosition { .. }),
        "{done:?}"
    );
    assert_eq!(bias, vec![0.5, 1.5, 2.5]);
    assert_eq!(align(&TaskKind::Regression).0, ClassAlignment::NotNeeded);
    // Unnamed outputs (transformers' placeholders, or no id2label) are the classes 0 to n-1,
    // by number: data naming those numbers in another order reorders the head, as named
    // classes do; other classes stay matched by position, with nothing to say otherwise.
    let placeholders = r#""id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},"#;
    for (name, id2label) in [("placeholders", placeholders), ("unnamed", "")] {
        let ck = write(name, "BertForSequenceClassification", id2label, 3);
        let align = |kind: &TaskKind| align_on(&ck, kind);
        let (done, bias) = align(&classes(&["2", "0", "1"]));
        assert_eq!(
            done,
            ClassAlignment::Reordered {
                head_classes: vec!["0".into(), "1".into(), "2".into()]
            },
            "{name}"
        );
        assert_eq!(bias, vec![2.5, 0.5, 1.5], "{name}");
        assert_eq!(
            align(&classes(&["0", "1", "2"])),
            (ClassAlignment::SameOrder, vec![0.5, 1.5, 2.5]),
            "{name}"
        );
        assert_eq!(
            align(&classes(&["b", "c", "a"])),
            (ClassAlignment::NotNeeded, vec![0.5, 1.5, 2.5]),
            "{name}"
        );
    }
    // A fresh head of the data's size has no classes to line up.
    let mut fresh = BertClassifier::from_checkpoint(&ck, &cpu, 2, 0).unwrap();
    assert_eq!(
        fresh
            .align_classes(&ck, &cpu, &classes(&["pos", "neg"]))
            .unwrap(),
        ClassAlignment::NotNeeded
    );

    // The output count is read from the head, so the two cannot disagree.
    let mut model = BertClassifier::from_fine_tuned(&ck, &cpu).unwrap();
    model.classifier = spafit::nn::Linear::new(
        "classifier",
        common::tensor(&cpu, &[4, 15], &[0.1; 60]),
        common::tensor(&cpu, &[4], &[0.0; 4]),
    )
    .unwrap();
    assert_eq!(model.num_labels(), 4);
}

/// `BertConfig::validate` checks what loading checks, for a config built in code.
#[test]
fn configs_built_in_code_are_validated_as_loaded_ones() {
    let albert = BertConfig {
        model_type: Some("albert".into()),
        ..tiny_bert::config(2)
    };
    let e = albert.validate().unwrap_err().to_string();
    assert!(e.contains("`model_type` is `albert`"), "{e}");
    // ELECTRA's embedding tables are `embedding_size` wide.
    let electra = BertConfig {
        model_type: Some("electra".into()),
        embedding_size: Some(1 << 62),
        ..tiny_bert::config(2)
    };
    let e = electra.validate().unwrap_err().to_string();
    assert!(e.contains("`embedding_size`"), "{e}");
    let roberta = BertConfig {
        model_type: Some("roberta".into()),
        pad_token_id: Some(Some(tiny_bert::config(2).max_position_embeddings - 1)),
        ..tiny_bert::config(2)
    };
    let e = roberta.validate().unwrap_err().to_string();
    assert!(e.contains("leaves no RoBERTa positions"), "{e}");
    // Q, K, V, O and the pooler are hidden × hidden: a size whose square wraps is refused.
    let huge = BertConfig {
        hidden_size: 1 << 33,
        num_attention_heads: 1,
        vocab_size: 1,
        max_position_embeddings: 1,
        type_vocab_size: 1,
        intermediate_size: 1,
        ..tiny_bert::config(2)
    };
    let e = huge.validate().unwrap_err().to_string();
    assert!(e.contains("`hidden_size`"), "{e}");
    assert!(tiny_bert::config(2).validate().is_ok());
}
