//! XLM-RoBERTa's SentencePiece tokenizer (`XLMRobertaTokenizer`), against transformers 5.24
//! on a tiny random XLM-R checkpoint (`tests/fixtures/tiny-xlm-roberta/`, written by its
//! `make_fixture.py`): ids under ten variants of the tokenizer files at three max lengths,
//! the model's logits on them, the same tokenizer beside a BERT-shaped model, pairs of long
//! texts, and files that disagree.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::tokenizer_variants::{
    assert_encodes_as, check_logits, check_variants, cut_under_the_class_pipeline, ids, read_json,
    texts, variant_folder,
};
use serde_json::Value;
use spafit::checkpoint::{Checkpoint, EncoderFamily};
use spafit::text::TextInput;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-xlm-roberta")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
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
    let n = check_variants(
        &fixture_dir().join("model"),
        &e,
        cut_under_the_class_pipeline,
    );
    assert_eq!(n, 21);
}

/// The model on the tokens spafit gives gives transformers' float64 logits (batches padded
/// to the longest, as transformers pads them).
#[test]
fn logits_match_transformers() {
    let ck = Checkpoint::open(fixture_dir().join("model")).unwrap();
    assert_eq!(ck.config.family(), EncoderFamily::Roberta);
    check_logits(&ck, &expected(), "XLM-R");
}

/// Multilingual BERT-shaped checkpoints (multilingual MiniLM and its kin) name
/// `XLMRobertaTokenizer` beside a `bert` config: the class decides the ids (tokenizer.json's
/// own pre-tokenizer, here one that splits at punctuation, is not used, as in the
/// `json_pipeline_ignored` variant transformers read), and pairs get no segment ids. Without
/// the name, transformers would read the Unigram pieces as BertTokenizer's WordPiece
/// vocabulary: refused, naming the classes to name; named in config.json instead (which
/// AutoTokenizer reads where tokenizer_config.json names none), the class decides again.
#[test]
fn a_bert_model_takes_the_class_it_names() {
    let e = expected();
    let ignored = &e["cases"][6];
    assert_eq!(ignored["name"], "json_pipeline_ignored");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bert");
    variant_folder(&fixture_dir().join("model"), &dir, ignored);
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
    let err = Checkpoint::open(&dir)
        .unwrap()
        .tokenizer(40)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json")
            && err.contains("not WordPiece")
            && err.contains("XLMRobertaTokenizer"),
        "{err}"
    );
    // transformers takes the class config.json names where tokenizer_config.json names none.
    let path = dir.join("config.json");
    let mut model_config = read_json(&path);
    model_config["tokenizer_class"] = Value::from("XLMRobertaTokenizer");
    std::fs::write(path, model_config.to_string()).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    let tok = ck.tokenizer(40).unwrap();
    assert_encodes_as(
        &tok,
        &e,
        &ignored["by_max_len"]["40"],
        "class in config.json",
    );
}

/// A 4 MB text made of the fixture's long one repeated encodes as that text does (the cut
/// leaves a prefix of a few kilobytes to tokenize); and a pair of two long texts (whose
/// texts are tokenized whole) is truncated longest-first without tokenizers' overflow
/// windows (which would pair every window of one text's dropped tokens with every window of
/// the other's: ~10^9 encodings here): the first pieces of each, as a short encoding of each
/// shows them.
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
/// piece, a config with the end token null, an unreadable SentencePiece table (which
/// tokenizers' reader would panic on), a padding token the vocabulary lacks (named, with the
/// id it would get); and a SentencePiece model without the tokenizer.json converted from it
/// is named as such.
#[test]
fn files_that_disagree_with_the_class_are_named() {
    let e = expected();
    let tmp = tempfile::tempdir().unwrap();
    let refusal = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let dir = tmp.path().join(name);
        variant_folder(&fixture_dir().join("model"), &dir, &e["cases"][0]);
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
    // tokenizers' own reader panics on an unreadable table; spafit refuses it first.
    for (name, table) in [("bad_table", "AAAA"), ("table_not_base64", "!!")] {
        let err = refusal(name, &|dir| {
            let path = dir.join("tokenizer.json");
            let mut tokenizer = read_json(&path);
            tokenizer["normalizer"]["precompiled_charsmap"] = Value::from(table);
            std::fs::write(path, tokenizer.to_string()).unwrap();
        });
        assert!(
            err.contains("tokenizer.json") && err.contains("precompiled_charsmap"),
            "{err}"
        );
    }
    // A named token the vocabulary lacks gets an id beyond the model's embeddings: named.
    let beyond = refusal("pad_beyond", &|dir| {
        let path = dir.join("tokenizer_config.json");
        let mut config = read_json(&path);
        config["pad_token"] = Value::from("<padx>");
        std::fs::write(path, config.to_string()).unwrap();
    });
    assert!(
        beyond.contains("`<padx>` (id 139)") && beyond.contains("vocab_size is 139"),
        "{beyond}"
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
