//! Tokenizer fixtures written by transformers as variants of a checkpoint's tokenizer files
//! (`tests/fixtures/tiny-xlm-roberta/make_fixture.py`, `tiny-roberta/make_named_tokens.py`):
//! each case edits a copy of the model folder and records the ids AutoTokenizer gives a
//! list of texts and pairs at several max lengths.

use std::path::{Path, PathBuf};

use serde_json::Value;
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::model::{BertClassifier, ModelInput};
use spafit::nn::DropoutPlan;
use spafit::text::{TextInput, TextTokenizer};

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `model` copied to `dir` with `case`'s edits: `config` entries replace
/// tokenizer_config.json's (null removes one; `config_null` keys become null), `map` becomes
/// special_tokens_map.json, `tokenizer_json` entries replace tokenizer.json's, `model_json`
/// entries its model's, `drop` removes files.
pub fn variant_folder(model: &Path, dir: &Path, case: &Value) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), dir.join(f)).unwrap();
    }
    let mut config = read_json(&model.join("tokenizer_config.json"));
    let settings = config.as_object_mut().unwrap();
    for (key, value) in case["config"].as_object().into_iter().flatten() {
        match value {
            Value::Null => settings.remove(key),
            v => settings.insert(key.clone(), v.clone()),
        };
    }
    for key in case["config_null"].as_array().into_iter().flatten() {
        settings.insert(key.as_str().unwrap().to_string(), Value::Null);
    }
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    if let Some(map) = case.get("map") {
        std::fs::write(dir.join("special_tokens_map.json"), map.to_string()).unwrap();
    }
    let mut tokenizer = read_json(&model.join("tokenizer.json"));
    for (key, value) in case["tokenizer_json"].as_object().into_iter().flatten() {
        tokenizer[key] = value.clone();
    }
    for (key, value) in case["model_json"].as_object().into_iter().flatten() {
        tokenizer["model"][key] = value.clone();
    }
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    for f in case["drop"].as_array().into_iter().flatten() {
        std::fs::remove_file(dir.join(f.as_str().unwrap())).unwrap();
    }
}

pub fn texts(e: &Value) -> Vec<String> {
    e["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

pub fn pairs(e: &Value) -> Vec<(String, String)> {
    e["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let text = |i: usize| p[i].as_str().unwrap().to_string();
            (text(0), text(1))
        })
        .collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `tok`'s ids and segment ids for every text and pair of fixture `e` equal `want`'s (one
/// max length of a case).
pub fn assert_encodes_as(tok: &TextTokenizer, e: &Value, want: &Value, what: &str) {
    let texts = texts(e);
    let pairs = pairs(e);
    let inputs = texts
        .iter()
        .map(|t| TextInput::Single(t))
        .zip(want["singles"].as_array().unwrap())
        .chain(
            pairs
                .iter()
                .map(|(a, b)| TextInput::Pair(a, b))
                .zip(want["pairs"].as_array().unwrap()),
        );
    let mut n = 0;
    for (input, want) in inputs {
        let got = tok.encode(input).unwrap();
        assert_eq!(got.ids, ids(&want["input_ids"]), "{what}: {input:?}");
        assert_eq!(
            got.type_ids,
            ids(&want["token_type_ids"]),
            "{what}: {input:?}"
        );
        n += 1;
    }
    assert_eq!(n, texts.len() + pairs.len(), "{what}");
}

/// Every case of fixture `e` over `model`: the folder opens as a checkpoint, and its
/// tokenizer (read without the model where the case says `without_model`) gives
/// transformers' padding id and ids at every max length; `also` sees each case's name and
/// tokenizer. Returns the number of cases.
pub fn check_variants(model: &Path, e: &Value, also: impl Fn(&str, &TextTokenizer)) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let cases = e["cases"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir: PathBuf = tmp.path().join(name);
        variant_folder(model, &dir, case);
        let ck = Checkpoint::open(&dir).unwrap();
        let by_max_len = case["by_max_len"].as_object().unwrap();
        assert!(!by_max_len.is_empty(), "{name}");
        for (max_len, want) in by_max_len {
            let max_len: usize = max_len.parse().unwrap();
            let tok = match case["without_model"].as_bool() {
                Some(true) => {
                    let config = dir.join("tokenizer_config.json");
                    TextTokenizer::from_files(&dir.join("tokenizer.json"), Some(&config), max_len)
                }
                _ => ck.tokenizer(max_len),
            }
            .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(
                tok.pad_id() as u64,
                case["pad_id"].as_u64().unwrap(),
                "{name}"
            );
            assert_encodes_as(&tok, e, want, &format!("{name} at {max_len}"));
            also(name, &tok);
        }
    }
    cases.len()
}

/// For [`check_variants`] on SentencePiece fixtures: long single texts are cut where the
/// pipeline is the class's own, from the right (not for tokenizer.json read as it is, nor
/// left truncation).
pub fn cut_under_the_class_pipeline(name: &str, tok: &TextTokenizer) {
    if !name.contains("as_it_is") && !name.contains("left") {
        assert!(tok.cuts_long_texts(), "{name}");
    }
}

/// `ck`'s own head on the tokens spafit gives `e`'s texts and pairs at 40 tokens gives
/// transformers' float64 logits (`e["logits"]`; batches padded to the longest, as
/// transformers pads them) to 1e-12.
pub fn check_logits(ck: &Checkpoint, e: &Value, what: &str) {
    let cpu = CpuBackend::f64();
    let model = BertClassifier::from_fine_tuned(ck, &cpu).unwrap();
    let tok = ck.tokenizer(40).unwrap();
    let (texts, pairs) = (texts(e), pairs(e));
    let batches: [(&str, Vec<TextInput>); 2] = [
        (
            "singles",
            texts.iter().map(|t| TextInput::Single(t)).collect(),
        ),
        (
            "pairs",
            pairs.iter().map(|(a, b)| TextInput::Pair(a, b)).collect(),
        ),
    ];
    for (name, inputs) in batches {
        let enc = tok.encode_batch(&inputs).unwrap();
        let input = ModelInput::for_model(&cpu, &enc, &ck.config).unwrap();
        let mut tape = Tape::inference(cpu);
        let out = model
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        let got = cpu.to_f64(out.value()).unwrap();
        let want: Vec<f64> = e["logits"][name]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        let err = super::rel_err(&got, &want);
        println!("{what} {name} logits vs transformers f64: {err:.2e}");
        assert!(err < 1e-12, "{name}: {err:.2e}");
    }
}
