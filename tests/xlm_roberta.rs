//! XLM-RoBERTa's SentencePiece tokenizer (`XLMRobertaTokenizer`), against transformers 5.24
//! on a tiny random XLM-R checkpoint (`tests/fixtures/tiny-xlm-roberta/`, written by its
//! `make_fixture.py`): ids under ten variants of the tokenizer files at three max lengths,
//! the model's logits on them, the same tokenizer beside a BERT-shaped model, pairs of long
//! texts, and files that disagree.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::rel_err;
use serde_json::Value;
use spafit::autograd::Tape;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::checkpoint::{Checkpoint, EncoderFamily};
use spafit::model::{BertClassifier, ModelInput};
use spafit::nn::DropoutPlan;
use spafit::text::{TextInput, TextTokenizer};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-xlm-roberta")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's model folder, copied to `dir` with `case`'s edits (as `make_fixture.py`
/// makes its variants): `config` entries replace tokenizer_config.json's (null removes one),
/// `tokenizer_json` entries replace tokenizer.json's, `model_json` entries its model's.
fn variant_folder(dir: &Path, case: &Value) {
    std::fs::create_dir_all(dir).unwrap();
    let model = fixture_dir().join("model");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), dir.join(f)).unwrap();
    }
    let mut config = read_json(&model.join("tokenizer_config.json"));
    for (key, value) in case["config"].as_object().into_iter().flatten() {
        match value {
            Value::Null => config.as_object_mut().unwrap().remove(key),
            v => config
                .as_object_mut()
                .unwrap()
                .insert(key.clone(), v.clone()),
        };
    }
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let mut tokenizer = read_json(&model.join("tokenizer.json"));
    for (key, value) in case["tokenizer_json"].as_object().into_iter().flatten() {
        tokenizer[key] = value.clone();
    }
    for (key, value) in case["model_json"].as_object().into_iter().flatten() {
        tokenizer["model"][key] = value.clone();
    }
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

fn texts(e: &Value) -> Vec<String> {
    e["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn pairs(e: &Value) -> Vec<(String, String)> {
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

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `tok`'s ids and segment ids for every text and pair equal `want`'s (one max length of a
/// fixture case).
fn assert_encodes_as(tok: &TextTokenizer, e: &Value, want: &Value, what: &str) {
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

/// The ids transformers' AutoTokenizer gives (`XLMRobertaTokenizer`; `TokenizersBackend`
/// for `PreTrainedTokenizerFast`), for 14 texts and 5 pairs — multilingual, NFKC-normalized
/// forms (fullwidth letters, ligatures, decomposed accents), odd whitespace, characters the
/// vocabulary lacks, literal special tokens, empty texts, two texts long enough to be cut
/// (one with no place to cut), and a pair of long texts — at max lengths
/// 40, 13 and 8, under the shipped files and nine variants: no class (implied by
/// `model_type`), the `Fast` name, `add_prefix_space: false`, the SentencePiece table in a
/// normalizer sequence or absent, a pre-tokenizer and unknown id in tokenizer.json that the
/// class overrides, truncation from the left (config or tokenizer.json), and the file read as
/// it is.
#[test]
fn ids_match_transformers_under_every_variant() {
    let e = expected();
    let tmp = tempfile::tempdir().unwrap();
    let cases = e["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = tmp.path().join(name);
        variant_folder(&dir, case);
        let ck = Checkpoint::open(&dir).unwrap();
        assert_eq!(ck.config.family(), EncoderFamily::Roberta);
        let by_max_len = case["by_max_len"].as_object().unwrap();
        assert_eq!(by_max_len.len(), 3, "{name}");
        for (max_len, want) in by_max_len {
            let tok = ck
                .tokenizer(max_len.parse().unwrap())
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(
                tok.pad_id() as u64,
                case["pad_id"].as_u64().unwrap(),
                "{name}"
            );
            assert_encodes_as(&tok, &e, want, &format!("{name} at {max_len}"));
        }
    }
}

/// The model on the tokens spafit gives gives transformers' float64 logits (batches padded
/// to the longest, as transformers pads them).
#[test]
fn logits_match_transformers() {
    let e = expected();
    let ck = Checkpoint::open(fixture_dir().join("model")).unwrap();
    let cpu = CpuBackend::f64();
    let model = BertClassifier::from_fine_tuned(&ck, &cpu).unwrap();
    let tok = ck.tokenizer(40).unwrap();
    let (texts, pairs) = (texts(&e), pairs(&e));
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
        let err = rel_err(&got, &want);
        println!("XLM-R {name} logits vs transformers f64: {err:.2e}");
        assert!(err < 1e-12, "{name}: {err:.2e}");
    }
}

/// Multilingual BERT-shaped checkpoints (multilingual MiniLM and its kin) name
/// `XLMRobertaTokenizer` beside a `bert` config: the class decides the ids (tokenizer.json's
/// own pre-tokenizer, here one that splits at punctuation, is not used, as in the
/// `json_pipeline_ignored` variant transformers read), and pairs get no segment ids. Without
/// the name, a BERT checkpoint's tokenizer.json is read as it is.
#[test]
fn a_bert_model_takes_the_class_it_names() {
    let e = expected();
    let ignored = &e["cases"][6];
    assert_eq!(ignored["name"], "json_pipeline_ignored");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bert");
    variant_folder(&dir, ignored);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::minilm_dir().join(f), dir.join(f)).unwrap();
    }
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.config.family(), EncoderFamily::Bert);
    let tok = ck.tokenizer(40).unwrap();
    assert_encodes_as(&tok, &e, &ignored["by_max_len"]["40"], "BERT model");
    let path = dir.join("tokenizer_config.json");
    let mut config = read_json(&path);
    config.as_object_mut().unwrap().remove("tokenizer_class");
    std::fs::write(path, config.to_string()).unwrap();
    let as_it_is = Checkpoint::open(&dir).unwrap().tokenizer(40).unwrap();
    let text = &texts(&e)[0];
    assert_ne!(
        as_it_is.encode(TextInput::Single(text)).unwrap().ids,
        tok.encode(TextInput::Single(text)).unwrap().ids,
        "tokenizer.json read as it is splits at punctuation"
    );
}

/// A 4 MB text made of the fixture's long one repeated encodes as that text does (the cut
/// leaves a prefix of a few kilobytes to tokenize); and a pair of two long texts (whose
/// texts are tokenized whole) is truncated longest-first without tokenizers' overflow windows (which would pair every
/// window of one text's dropped tokens with every window of the other's: ~10^9 encodings
/// here): the first pieces of each, as a short encoding of each shows them.
#[test]
fn long_texts_are_cut_and_pairs_keep_the_first_pieces_of_each() {
    let ck = Checkpoint::open(fixture_dir().join("model")).unwrap();
    let e = expected();
    let texts = texts(&e);
    let long = &texts[12];
    assert!(long.len() > 10_000);
    let huge = long.repeat(4_000_000 / long.len());
    for max_len in [40, 13, 8] {
        let want = &e["cases"][0]["by_max_len"][max_len.to_string()]["singles"][12];
        let start = Instant::now();
        let got = ck
            .tokenizer(max_len)
            .unwrap()
            .encode(TextInput::Single(&huge))
            .unwrap();
        println!(
            "a {:.1} MB text at {max_len}: {:?}",
            huge.len() as f64 / 1e6,
            start.elapsed()
        );
        assert_eq!(got.ids, ids(&want["input_ids"]), "at {max_len}");
    }
    let (a, b) = (texts[0].repeat(4_000), texts[1].repeat(4_000));
    assert!(a.len() > 200_000 && b.len() > 200_000);
    let first = |text: &str| {
        ck.tokenizer(40)
            .unwrap()
            .encode(TextInput::Single(text))
            .unwrap()
            .ids
    };
    let (a_ids, b_ids) = (first(&texts[0]), first(&texts[1]));
    let start = Instant::now();
    let got = ck
        .tokenizer(9)
        .unwrap()
        .encode(TextInput::Pair(&a, &b))
        .unwrap();
    println!(
        "a pair of two {} KB texts: {:?}",
        a.len() / 1000,
        start.elapsed()
    );
    // 9 - 4 special tokens: the odd one goes to the longer text, the first.
    let (bos, eos) = (a_ids[0], *a_ids.last().unwrap());
    let mut want = vec![bos];
    want.extend(&a_ids[1..4]);
    want.extend([eos, eos]);
    want.extend(&b_ids[1..3]);
    want.push(eos);
    assert_eq!(got.ids, want);
    assert_eq!(got.type_ids, [0; 9]);
}

/// Files that disagree with the class they name are refused, naming the file: a BPE
/// tokenizer.json under `XLMRobertaTokenizer`, a vocabulary without the fourth (unknown)
/// piece, a config with the end token null; and a SentencePiece model without the
/// tokenizer.json converted from it is named as such.
#[test]
fn files_that_disagree_with_the_class_are_named() {
    let e = expected();
    let tmp = tempfile::tempdir().unwrap();
    let refusal = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let dir = tmp.path().join(name);
        variant_folder(&dir, &e["cases"][0]);
        edit(&dir);
        let err = Checkpoint::open(&dir)
            .unwrap()
            .tokenizer(40)
            .expect_err(name)
            .to_string();
        println!("{name}: {err}");
        err
    };
    let bpe = refusal("bpe", &|dir| {
        let roberta = fixture_dir().join("../tiny-roberta/model/tokenizer.json");
        std::fs::copy(roberta, dir.join("tokenizer.json")).unwrap();
    });
    assert!(
        bpe.contains("tokenizer.json") && bpe.contains("not Unigram"),
        "{bpe}"
    );
    let short = refusal("three_pieces", &|dir| {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = read_json(&path);
        let vocab = tokenizer["model"]["vocab"].as_array_mut().unwrap();
        vocab.truncate(3);
        tokenizer["model"]["unk_id"] = Value::Null;
        tokenizer["added_tokens"] = serde_json::json!([]);
        std::fs::write(path, tokenizer.to_string()).unwrap();
    });
    assert!(
        short.contains("tokenizer.json") && short.contains("3 pieces"),
        "{short}"
    );
    let no_eos = refusal("no_eos", &|dir| {
        let path = dir.join("tokenizer_config.json");
        let mut config = read_json(&path);
        config["eos_token"] = Value::Null;
        std::fs::write(path, config.to_string()).unwrap();
    });
    assert!(
        no_eos.contains("tokenizer_config.json") && no_eos.contains("eos_token"),
        "{no_eos}"
    );
    let spm_only = refusal("spm_only", &|dir| {
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        std::fs::write(dir.join("sentencepiece.bpe.model"), b"\x0a\x00").unwrap();
    });
    assert!(
        spm_only.contains("sentencepiece.bpe.model") && spm_only.contains("tokenizer.json"),
        "{spm_only}"
    );
}
