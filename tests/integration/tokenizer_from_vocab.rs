//! BERT's tokenizer built from `vocab.txt` + `tokenizer_config.json` (checkpoints without a
//! `tokenizer.json`) against the ids transformers gives for the same folder
//! (`tests/fixtures/wordpiece-vocab/`, written by transformers' `AutoTokenizer`).

use crate::common;

use std::path::{Path, PathBuf};

use common::minilm_dir as minilm;
use spafit::text::{TextInput, TextTokenizer};

fn expected() -> serde_json::Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wordpiece-vocab/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The fixture's single texts and text pairs.
fn inputs(fixture: &serde_json::Value) -> (Vec<&str>, Vec<(&str, &str)>) {
    let texts = fixture["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let pairs = fixture["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
        .collect();
    (texts, pairs)
}

/// `tok` gives a fixture case's ids (and segment ids) for every text and pair, and pads
/// with id 0, as transformers did.
fn assert_case_ids(
    tok: &TextTokenizer,
    case: &serde_json::Value,
    texts: &[&str],
    pairs: &[(&str, &str)],
    name: &str,
) {
    for (text, want) in texts.iter().zip(case["singles"].as_array().unwrap()) {
        let got = tok.encode(TextInput::Single(text)).unwrap();
        assert_eq!(got.ids, ids(want), "{name}: {text:?}");
        assert!(got.type_ids.iter().all(|&t| t == 0));
    }
    for ((a, b), want) in pairs.iter().zip(case["pairs"].as_array().unwrap()) {
        let got = tok.encode(TextInput::Pair(a, b)).unwrap();
        assert_eq!(got.ids, ids(&want["input_ids"]), "{name}: {a:?} / {b:?}");
        assert_eq!(got.type_ids, ids(&want["token_type_ids"]), "{name}");
    }
    assert_eq!(tok.pad_id(), 0);
}

/// A folder like a checkpoint saved before tokenizer.json: vocab.txt and a config.
fn vocab_folder(dir: &Path, config: &serde_json::Value) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = dir.join("vocab.txt");
    std::fs::copy(minilm().join("vocab.txt"), &vocab).unwrap();
    let config_path = dir.join("tokenizer_config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    (vocab, config_path)
}

#[test]
fn ids_match_transformers_for_three_tokenizer_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = expected();
    let (texts, pairs) = inputs(&fixture);
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut config = case["tokenizer_config"].clone();
        config["tokenizer_class"] = "BertTokenizer".into();
        let (vocab, config) = vocab_folder(&tmp.path().join(name), &config);
        let tok = TextTokenizer::from_vocab(&vocab, Some(&config), 512).unwrap();
        assert_case_ids(&tok, case, &texts, &pairs, name);
    }

    // The uncased build is the checkpoint's own tokenizer.json, truncation included.
    let (vocab, config) = vocab_folder(&tmp.path().join("plain"), &serde_json::json!({}));
    for max_len in [8, 512] {
        let built = TextTokenizer::from_vocab(&vocab, Some(&config), max_len).unwrap();
        let shipped = TextTokenizer::from_file(&minilm().join("tokenizer.json"), max_len).unwrap();
        for input in texts
            .iter()
            .map(|t| TextInput::Single(t))
            .chain(pairs.iter().map(|(a, b)| TextInput::Pair(a, b)))
        {
            assert_eq!(
                built.encode(input).unwrap(),
                shipped.encode(input).unwrap(),
                "{input:?}"
            );
        }
    }
}

#[test]
fn configs_and_vocabularies_it_cannot_build_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |name: &str, config: serde_json::Value| {
        let (vocab, config) = vocab_folder(&tmp.path().join(name), &config);
        TextTokenizer::from_vocab(&vocab, Some(&config), 64)
            .err()
            .unwrap_or_else(|| panic!("{name}: built"))
            .to_string()
    };
    let e = err(
        "sentencepiece",
        serde_json::json!({"tokenizer_class": "XLMRobertaTokenizer"}),
    );
    assert!(
        e.contains("tokenizer_config.json") && e.contains("`XLMRobertaTokenizer`"),
        "{e}"
    );
    // transformers 5.24's BertTokenizer ignores `do_basic_tokenize: false` (it still splits
    // on punctuation and whitespace first): so does spafit.
    let (vocab, config) = vocab_folder(
        &tmp.path().join("no-basic"),
        &serde_json::json!({"do_basic_tokenize": false}),
    );
    let tok = TextTokenizer::from_vocab(&vocab, Some(&config), 64).unwrap();
    let ids = tok
        .encode(TextInput::Single("Hello, world! naïve"))
        .unwrap()
        .ids;
    assert_eq!(ids, [101, 7592, 1010, 2088, 999, 15743, 102]);
    let e = err("lower-string", serde_json::json!({"do_lower_case": "yes"}));
    assert!(e.contains("`do_lower_case` is \"yes\""), "{e}");
    let e = err("cls", serde_json::json!({"cls_token": "<s>"}));
    assert!(
        e.contains("vocab.txt") && e.contains("the cls_token `<s>` is not in the vocabulary"),
        "{e}"
    );
    // Tokens added beyond the vocabulary would be split into word pieces: refused.
    let e = err(
        "added",
        serde_json::json!({"additional_special_tokens": ["[E1]", "[/E1]"]}),
    );
    assert!(
        e.contains("adds tokens beyond the vocabulary ([E1], [/E1])"),
        "{e}"
    );
    let e = err(
        "added-decoder",
        serde_json::json!({"added_tokens_decoder": {
            "0": {"content": "[PAD]", "special": true},
            "30522": {"content": "<ent>", "special": false}}}),
    );
    assert!(e.contains("(<ent>)"), "{e}");
    let dir = tmp.path().join("added-file");
    let (vocab, config) = vocab_folder(&dir, &serde_json::json!({}));
    std::fs::write(dir.join("added_tokens.json"), r#"{"<ent>": 30522}"#).unwrap();
    let e = TextTokenizer::from_vocab(&vocab, Some(&config), 64)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("added_tokens.json"), "{e}");
    // transformers writes a special token as an object too.
    let (vocab, config) = vocab_folder(
        &tmp.path().join("object-token"),
        &serde_json::json!({"mask_token": {"content": "[MASK]", "lstrip": true}}),
    );
    TextTokenizer::from_vocab(&vocab, Some(&config), 64).unwrap();

    let dir = tmp.path().join("latin1");
    let (vocab, _) = vocab_folder(&dir, &serde_json::json!({}));
    let mut bytes = std::fs::read(&vocab).unwrap();
    bytes.extend_from_slice(b"caf\xe9\n");
    std::fs::write(&vocab, bytes).unwrap();
    let e = TextTokenizer::from_vocab(&vocab, None, 64)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vocab.txt") && e.contains("line 30523"), "{e}");
}

/// A checkpoint folder without tokenizer.json tokenizes from its vocab.txt, as transformers
/// loads it; with neither file the error says what is missing.
#[test]
fn a_checkpoint_without_tokenizer_json_uses_its_vocab() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::os::unix::fs::symlink(minilm().join(f), dir.join(f)).unwrap();
    }
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(minilm().join(f), dir.join(f)).unwrap();
    }
    let ck = spafit::checkpoint::Checkpoint::open(&dir).unwrap();
    let built = ck.tokenizer(16).unwrap();
    let shipped = TextTokenizer::from_file(&minilm().join("tokenizer.json"), 16).unwrap();
    let input = TextInput::Pair("A long first sentence, longer than the second.", "Short.");
    assert_eq!(built.encode(input).unwrap(), shipped.encode(input).unwrap());

    std::fs::remove_file(dir.join("vocab.txt")).unwrap();
    let e = ck.tokenizer(16).err().unwrap().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("nor a vocab.txt"),
        "{e}"
    );
}

/// transformers' `BertTokenizer` keeps only the vocabulary and added tokens of a
/// `tokenizer.json` and rebuilds the rest from `tokenizer_config.json`: the uncased MiniLM
/// `tokenizer.json` beside each fixture config gives the ids transformers gives for that
/// config, even where the two files disagree on lower-casing.
#[test]
fn tokenizer_json_beside_a_bert_config_follows_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = expected();
    let (texts, pairs) = inputs(&fixture);
    // The same tokenizer.json without its added tokens: transformers adds the config's
    // special tokens itself, so `[MASK]` in a text still matches whole.
    let mut bare: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm().join("tokenizer.json")).unwrap())
            .unwrap();
    bare["added_tokens"] = serde_json::json!([]);
    let bare_path = tmp.path().join("no-added-tokens.json");
    std::fs::write(&bare_path, bare.to_string()).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut config = case["tokenizer_config"].clone();
        config["tokenizer_class"] = "BertTokenizerFast".into();
        let (_, config) = vocab_folder(&tmp.path().join(name), &config);
        for json in [minilm().join("tokenizer.json"), bare_path.clone()] {
            let tok = TextTokenizer::from_files(&json, Some(&config), 512).unwrap();
            assert_case_ids(
                &tok,
                case,
                &texts,
                &pairs,
                &format!("{name} {}", json.display()),
            );
        }
    }
    // Through a checkpoint folder, against what transformers 5.24's AutoTokenizer gave for
    // the same folders: a cased config over the uncased tokenizer.json is cased; with no
    // tokenizer_config.json the class is still BertTokenizer (the model type's), with its
    // default lower-casing even over a cased tokenizer.json; a config naming another class
    // takes tokenizer.json as it is, one transformers maps to BertTokenizer (ElectraTokenizer,
    // and DistilBertTokenizer, which gives no segment ids) is BertTokenizer, and a class with
    // rules of its own (MPNetTokenizer) is refused by name.
    let minilm_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm().join("tokenizer.json")).unwrap())
            .unwrap();
    let folder_result = |name: &str, lowercase_json: bool, config: Option<serde_json::Value>| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::os::unix::fs::symlink(minilm().join(f), dir.join(f)).unwrap();
        }
        let mut json = minilm_json.clone();
        json["normalizer"]["lowercase"] = lowercase_json.into();
        std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
        if let Some(config) = config {
            std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        }
        let tok = spafit::checkpoint::Checkpoint::open(&dir)
            .unwrap()
            .tokenizer(16);
        match tok {
            Ok(tok) => Ok(tok.encode(TextInput::Single("HELLO World")).unwrap().ids),
            Err(e) => Err(e.to_string()),
        }
    };
    let folder = |name: &str, lowercase_json: bool, config: Option<serde_json::Value>| {
        folder_result(name, lowercase_json, config).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (unk, hello, world) = (100, 7592, 2088);
    let cased = serde_json::json!({"tokenizer_class": "BertTokenizer", "do_lower_case": false});
    assert_eq!(folder("cased", true, Some(cased))[1..3], [unk, unk]);
    let unnamed = serde_json::json!({"do_lower_case": false});
    assert_eq!(folder("unnamed", true, Some(unnamed))[1..3], [unk, unk]);
    assert_eq!(folder("no-config", false, None)[1..3], [hello, world]);
    let other =
        serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": false});
    assert_eq!(folder("other", true, Some(other))[1..3], [hello, world]);
    let other = serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast"});
    assert_eq!(folder("other-cased", false, Some(other))[1..3], [unk, unk]);
    let alias =
        serde_json::json!({"tokenizer_class": "ElectraTokenizerFast", "do_lower_case": false});
    assert_eq!(folder("electra", true, Some(alias))[1..3], [unk, unk]);
    let alias =
        serde_json::json!({"tokenizer_class": "DistilBertTokenizer", "do_lower_case": false});
    assert_eq!(folder("distilbert", true, Some(alias))[1..3], [unk, unk]);
    let own = serde_json::json!({"tokenizer_class": "FunnelTokenizer", "do_lower_case": false});
    let e = folder_result("funnel", true, Some(own)).unwrap_err();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("`FunnelTokenizer`"),
        "{e}"
    );
    // MPNetTokenizer is BERT's pipeline with `<s>`, `</s>`: a vocabulary without them is
    // refused, naming the token and the file that names it.
    let own = serde_json::json!({"tokenizer_class": "MPNetTokenizer", "do_lower_case": false});
    let e = folder_result("mpnet", true, Some(own)).unwrap_err();
    assert!(
        e.contains("the cls_token `<s>` is not in the vocabulary")
            && e.contains("tokenizer_config.json"),
        "{e}"
    );
}

/// Tokens a `tokenizer_config.json` adds (`added_tokens_decoder` with each token's flags,
/// `additional_special_tokens`, or `special_tokens_map.json`'s) match whole, beside a
/// tokenizer.json of any class and beside vocab.txt alike. The expected ids are what
/// transformers 5.24's AutoTokenizer gave for the same folders.
#[test]
fn tokens_the_config_adds_match_as_in_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let decoder = serde_json::json!({
        "2": {"content": "[unused1]", "special": true, "lstrip": false, "rstrip": false,
              "single_word": false, "normalized": false},
        "3": {"content": "[unused2]", "special": false, "lstrip": false, "rstrip": false,
              "single_word": false, "normalized": true}});
    let texts = [
        "a [unused1] b[unused1]c [UNUSED1]",
        "[unused2] [UNUSED2] [unused2]x",
    ];
    let special_only: [&[u32]; 2] = [
        &[101, 1037, 2, 1038, 2, 1039, 1031, 15171, 2487, 1033, 102],
        &[
            101, 1031, 15171, 2475, 1033, 1031, 15171, 2475, 1033, 1031, 15171, 2475, 1033, 1060,
            102,
        ],
    ];
    let both: [&[u32]; 2] = [special_only[0], &[101, 3, 3, 3, 1060, 102]];
    type Case<'a> = (
        &'a str,
        bool,
        serde_json::Value,
        Option<serde_json::Value>,
        [&'a [u32]; 2],
    );
    let cases: [Case; 5] = [
        (
            "json-bert",
            true,
            serde_json::json!({"tokenizer_class": "BertTokenizer", "added_tokens_decoder": decoder}),
            None,
            both,
        ),
        (
            "json-fast",
            true,
            serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast",
                               "added_tokens_decoder": decoder}),
            None,
            both,
        ),
        (
            "vocab",
            false,
            serde_json::json!({"tokenizer_class": "BertTokenizer", "added_tokens_decoder": decoder}),
            None,
            both,
        ),
        (
            "json-map",
            true,
            serde_json::json!({"tokenizer_class": "BertTokenizer"}),
            Some(serde_json::json!({"additional_special_tokens": ["[unused1]"]})),
            special_only,
        ),
        (
            "json-additional",
            true,
            serde_json::json!({"additional_special_tokens": ["[unused1]"]}),
            None,
            special_only,
        ),
    ];
    for (name, with_json, config, map, want) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = vec!["config.json", "model.safetensors"];
        files.push(if with_json {
            "tokenizer.json"
        } else {
            "vocab.txt"
        });
        for f in files {
            std::os::unix::fs::symlink(minilm().join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        if let Some(map) = map {
            std::fs::write(dir.join("special_tokens_map.json"), map.to_string()).unwrap();
        }
        let tok = spafit::checkpoint::Checkpoint::open(&dir)
            .unwrap()
            .tokenizer(64)
            .unwrap();
        for (text, want) in texts.iter().zip(want) {
            let got = tok.encode(TextInput::Single(text)).unwrap().ids;
            assert_eq!(got, want, "{name}: {text:?}");
        }
    }
}

/// Settings beside tokenizer.json's pipeline change the ids as in transformers 5.24
/// (`tests/fixtures/tokenizer-settings/expected.json`, written by its AutoTokenizer):
/// `special_tokens_map.json` overrides the config's named special tokens unless the config
/// has `added_tokens_decoder`; `truncation_side`, in the config or baked into tokenizer.json,
/// cuts from the left; `PreTrainedTokenizerFast` / `TokenizersBackend` and a
/// `model_input_names` without `token_type_ids` give the model no segment ids (all 0).
#[test]
fn settings_beside_the_vocabulary_change_ids_as_in_transformers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer-settings/expected.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(minilm().join(file)).unwrap()).unwrap()
    };
    let tmp = tempfile::tempdir().unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors", "vocab.txt"] {
            std::os::unix::fs::symlink(minilm().join(f), dir.join(f)).unwrap();
        }
        let mut config = read("tokenizer_config.json");
        for (key, value) in case["config"].as_object().into_iter().flatten() {
            config[key] = value.clone();
        }
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        let map = match case.get("map") {
            None => Some(read("special_tokens_map.json")),
            Some(serde_json::Value::Null) => None,
            Some(map) => Some(map.clone()),
        };
        if let Some(map) = map {
            std::fs::write(dir.join("special_tokens_map.json"), map.to_string()).unwrap();
        }
        let mut tokenizer_json = read("tokenizer.json");
        for (key, value) in case["tokenizer_json"].as_object().into_iter().flatten() {
            tokenizer_json[key] = value.clone();
        }
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json.to_string()).unwrap();
        for f in case["drop"].as_array().into_iter().flatten() {
            std::fs::remove_file(dir.join(f.as_str().unwrap())).unwrap();
        }
        let checkpoint = spafit::checkpoint::Checkpoint::open(&dir).unwrap();
        for (max_len, want) in case["by_max_len"].as_object().unwrap() {
            let tok = checkpoint
                .tokenizer(max_len.parse().unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                tok.pad_id() as u64,
                case["pad_id"].as_u64().unwrap(),
                "{name}"
            );
            let what = format!("{name}, max length {max_len}");
            common::tokenizer_variants::assert_encodes_as(&tok, &fixture, want, &what);
        }
    }
    // Settings transformers cannot load, or loads into nonsense (a null classifier token
    // becomes the word `None`), are refused naming the file that gives them.
    let refused = |name: &str, config: serde_json::Value, map: serde_json::Value| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::os::unix::fs::symlink(minilm().join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        std::fs::write(dir.join("special_tokens_map.json"), map.to_string()).unwrap();
        let checkpoint = spafit::checkpoint::Checkpoint::open(&dir).unwrap();
        match checkpoint.tokenizer(16) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = refused(
        "null-cls",
        serde_json::json!({}),
        serde_json::json!({"cls_token": null}),
    );
    assert!(
        e.contains("special_tokens_map.json") && e.contains("`cls_token` is null"),
        "{e}"
    );
    let e = refused(
        "middle",
        serde_json::json!({"truncation_side": "middle"}),
        serde_json::json!({}),
    );
    assert!(
        e.contains("tokenizer_config.json") && e.contains("`truncation_side`"),
        "{e}"
    );
    let e = refused(
        "extra-string",
        serde_json::json!({}),
        serde_json::json!({"additional_special_tokens": "[unused1]"}),
    );
    assert!(
        e.contains("special_tokens_map.json") && e.contains("not a list of tokens"),
        "{e}"
    );
}

/// Texts far longer than the truncation keeps, which spafit tokenizes only as far as it keeps
/// (where BERT's pipeline makes a prefix's tokens the text's first ones), encode to the ids
/// transformers gives them tokenized whole (`tests/fixtures/long-texts/expected.json`):
/// singly at lengths 8 to 512, in pairs with a short, a long and a ~max-length partner (61
/// to 63 tokens at 64), two long texts at odd and even budgets and a tie, and texts with no
/// whitespace to cut at. A 4 MB text made of one of them repeated encodes as that text does,
/// and a pair of two long ones as the rule says, without the memory tokenizers' own
/// truncation takes.
#[test]
fn long_texts_encode_as_transformers_encodes_them_whole() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/long-texts/expected.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let text =
        |name: &serde_json::Value| fixture["texts"][name.as_str().unwrap()].as_str().unwrap();
    let checkpoint = spafit::checkpoint::Checkpoint::open(minilm()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 21);
    for case in cases {
        let max_len = case["max_len"].as_u64().unwrap() as usize;
        let tok = checkpoint.tokenizer(max_len).unwrap();
        let input = match &case["b"] {
            serde_json::Value::Null => TextInput::Single(text(&case["a"])),
            b => TextInput::Pair(text(&case["a"]), text(b)),
        };
        let got = tok.encode(input).unwrap();
        let what = format!("{} + {} at {max_len}", case["a"], case["b"]);
        assert_eq!(got.ids, ids(&case["input_ids"]), "{what}");
        assert_eq!(got.type_ids, ids(&case["token_type_ids"]), "{what}");
    }
    let mixed = text(&serde_json::json!("mixed_12k"));
    let huge = mixed.repeat(4_000_000 / mixed.len());
    let case = &cases[2];
    assert_eq!(
        (case["a"].as_str(), case["max_len"].as_u64()),
        (Some("mixed_12k"), Some(64))
    );
    let got = checkpoint
        .tokenizer(64)
        .unwrap()
        .encode(TextInput::Single(&huge))
        .unwrap();
    assert_eq!(got.ids, ids(&case["input_ids"]));
    // A pair of two long texts: tokenizers' own truncation would keep every window of the
    // dropped tokens of each and pair them all (here ~1e8 pairs, far past any memory); the
    // odd token of 8 - 3 goes to the longer text, the first.
    let other = text(&serde_json::json!("mixed_10k"));
    let (a, b) = (mixed.repeat(40), other.repeat(20));
    let got = checkpoint
        .tokenizer(8)
        .unwrap()
        .encode(TextInput::Pair(&a, &b))
        .unwrap();
    let first_ids = |name: &str| {
        let case = cases
            .iter()
            .find(|c| c["a"] == name && c["b"].is_null())
            .unwrap();
        ids(&case["input_ids"])
    };
    let (a_ids, b_ids) = (first_ids("mixed_12k"), first_ids("mixed_10k"));
    let (cls, sep) = (a_ids[0], *a_ids.last().unwrap());
    let mut want = vec![cls];
    want.extend(&a_ids[1..4]);
    want.push(sep);
    want.extend(&b_ids[1..3]);
    want.push(sep);
    assert_eq!(got.ids, want);
    assert_eq!(got.type_ids, [0, 0, 0, 0, 0, 1, 1, 1]);
}
