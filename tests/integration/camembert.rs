//! CamemBERT's SentencePiece tokenizer (`CamembertTokenizer`) and model, against transformers
//! 5.24 on a tiny random CamemBERT (`tests/fixtures/tiny-camembert/`, written by
//! `tests/fixtures/tiny-xlm-roberta/make_fixture.py OUT camembert`): ids under the shipped
//! files and 25 variants of them at three max lengths, and the model's logits on them.

use crate::common;

use std::path::PathBuf;

use common::tokenizer_variants::{check_logits, check_variants, cut_under_the_class_pipeline};
use serde_json::Value;
use spafit::checkpoint::{Checkpoint, EncoderFamily};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-camembert")
}

fn expected() -> Value {
    common::tokenizer_variants::read_json(&fixture_dir().join("expected.json"))
}

/// The ids transformers' AutoTokenizer gives (`CamembertTokenizer`; `TokenizersBackend` for
/// `PreTrainedTokenizerFast`) under the shipped files — CamemBERT's vocabulary, which starts
/// `<s>NOTUSED <pad> </s>NOTUSED <unk> <unk>NOTUSED <s> </s>`, so `<s>` and `</s>` are 5 and
/// 6 — and the variants the XLM-R fixture has (the class implied by `model_type camembert`,
/// `add_prefix_space`, the normalization table, truncation side, `<mask>` in each place a
/// checkpoint can hold it, added tokens kept or dropped, `split_special_tokens`, tokens beyond
/// the vocabulary), and five where CamemBERT's class differs from XLM-R's (a plain
/// `mask_token`, the NOTUSED pieces special where the config names no extra tokens but not
/// where it names them null, the unknown id at the unknown token's place, or the first piece
/// where `unk_token` is null), at max lengths 40, 13 and 8.
#[test]
fn ids_match_transformers_under_every_variant() {
    let e = expected();
    for case in e["cases"].as_array().unwrap() {
        assert!(
            case["class"] == "CamembertTokenizer" || case["name"] == "tokenizer_json_as_it_is",
            "{}",
            case["name"]
        );
    }
    let n = check_variants(
        &fixture_dir().join("model"),
        &e,
        cut_under_the_class_pipeline,
    );
    assert_eq!(n, 26);
}

/// The model (`model_type camembert`: RoBERTa's encoder under `roberta.`) on the tokens spafit
/// yields transformers' float64 logits.
#[test]
fn logits_match_transformers() {
    let ck = Checkpoint::open(fixture_dir().join("model")).unwrap();
    assert_eq!(ck.config.family(), EncoderFamily::Roberta);
    assert_eq!(
        ck.config
            .family()
            .sequence_classifier(ck.config.model_type.as_deref()),
        "CamembertForSequenceClassification"
    );
    check_logits(&ck, &expected(), "CamemBERT");
}
