//! Texts far longer than the truncation length, tokenized only as far as the truncation
//! keeps: a 15 MB text cut to 64 tokens cost seconds and gigabytes, tokenized whole. (A
//! pair's texts are cut where longest-first truncation keeps the same tokens:
//! `TextTokenizer::encode_pair`.)
//!
//! Where the pipeline is BERT's (its normalizer, which maps each character on its own, and
//! its pre-tokenizer, which splits at whitespace), or RoBERTa's (no normalizer, and GPT-2's
//! byte-level split, whose words, numbers and punctuation runs all stop at whitespace), the
//! tokens of a prefix that ends before an ASCII whitespace character, after a character that
//! is not whitespace, are the first tokens of the whole text. (After whitespace the rule
//! would fail RoBERTa: GPT-2's split gives a run of spaces followed by a word one piece less
//! than a run that ends the text.) Where it is SentencePiece's as XLM-R's class builds it (a
//! normalization table applied grapheme by grapheme, then a split at whitespace, each word
//! tokenized on its own), the same holds for a prefix that ends after an ASCII character
//! that is not whitespace: a grapheme cluster always ends there, which a character such as
//! U+0600 (it joins the space after it into one cluster) would not promise. So a prefix
//! holding at least `max_len` tokens encodes, after truncation from the right, to the very
//! ids of the whole text. Other pipelines (custom normalizers and splits) tokenize whole.
//!
//! Texts without whitespace (minified JSON, URLs, base64) are cut before ASCII punctuation
//! too, where the split isolates it. BERT's pre-tokenizer makes every punctuation character
//! a word of its own, and its normalizer leaves ASCII punctuation as it is (a starter, so
//! NFD reorders nothing across it): a prefix that ends before one, after a character that is
//! not whitespace, gives the whole text's first tokens. GPT-2's split ends a run of letters
//! or digits at any other character: the same holds before ASCII punctuation that follows an
//! ASCII letter or digit. Not before `_`, a word character to the added tokens'
//! `single_word` test; not where an added token's occurrence spans the cut (`[MASK]` cut
//! before its `]`); not at all where an added token matched after BERT's normalization holds
//! punctuation (its occurrences in the raw text are not its own bytes). Where BERT's
//! normalizer spaces Chinese characters apart (`handle_chinese_chars`), before those too (a
//! starter each, as ASCII punctuation), unless a `single_word` added token is matched in the
//! raw text (one ending just before such a character, a `\w` one, is no match there, but is
//! at the end of a prefix). SentencePiece's split is at whitespace only: its texts are cut
//! there only.

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{NormalizedString, Normalizer, Tokenizer, TruncationDirection};

use super::added_tokens::MatchedToken;

/// Texts shorter than this many bytes per token kept are tokenized whole: cutting them saves
/// little, and most texts are.
const BYTES_PER_TOKEN_BEFORE_CUTTING: usize = 32;

/// Where the first try cuts, in bytes per token kept: English WordPiece averages 4–5.
const FIRST_CUT_BYTES_PER_TOKEN: usize = 8;

/// The ASCII whitespace a cut falls before.
const CUT_BEFORE: [u8; 4] = *b" \t\n\r";

/// Added tokens holding punctuation past which no cut is made before punctuation: each such
/// cut looks for each of them around it.
const MAX_GUARDED_TOKENS: usize = 64;

/// Where a long text may be cut (see the module's doc).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) struct CutRule {
    before_space: SpaceCut,
    /// Where the pipeline allows cuts before ASCII punctuation too.
    before_punctuation: Option<PunctuationCut>,
}

/// What a cut before ASCII whitespace must follow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SpaceCut {
    /// A character that is not whitespace: BERT's and RoBERTa's pipelines.
    AfterNonSpace,
    /// An ASCII character that is not whitespace: SentencePiece's pipeline, whose table maps
    /// grapheme clusters.
    AfterAsciiNonSpace,
}

/// Cuts before ASCII punctuation other than `_` (and, under BERT's pipeline, before the
/// Chinese characters its normalizer spaces apart).
#[derive(Clone, PartialEq, Eq, Debug)]
struct PunctuationCut {
    /// Whether the character before the cut must be an ASCII letter or digit (GPT-2's
    /// split), rather than any character that is not whitespace (BERT's).
    after_alphanumeric: bool,
    /// Whether cuts before Chinese characters are allowed too.
    before_chinese: bool,
    /// The added tokens (matched in the raw text) holding a character a cut may fall
    /// before: no cut falls inside an occurrence of one.
    guarded: Vec<Box<[u8]>>,
}

/// The characters BERT's normalizer puts spaces around (`handle_chinese_chars`), as
/// tokenizers' `is_chinese_char` lists them.
fn is_chinese(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// ASCII punctuation a cut may fall before: all but `_`, which `\w` counts as a letter.
fn is_cut_punctuation(b: u8) -> bool {
    b.is_ascii_punctuation() && b != b'_'
}

/// Whether `tokenizer`'s pipeline is BERT's: its normalizer (or none) and its split.
pub(super) fn is_bert_pipeline(tokenizer: &Tokenizer) -> bool {
    matches!(
        tokenizer.get_normalizer(),
        None | Some(NormalizerWrapper::BertNormalizer(_))
    ) && matches!(
        tokenizer.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::BertPreTokenizer(_))
    )
}

/// Where `tokenizer`'s pipeline, with `added` its added tokens as `matched_tokens` gives
/// them, allows cutting long texts (see the module's doc) when it truncates from
/// `direction`, if it does.
pub(super) fn cut_rule(
    tokenizer: &Tokenizer,
    direction: TruncationDirection,
    added: &[MatchedToken],
) -> Option<CutRule> {
    // An added token that holds whitespace could straddle a cut.
    let added_tokens_whole = added
        .iter()
        .all(|t| !t.content.contains(|c: char| c.is_whitespace()));
    if direction != TruncationDirection::Right || !added_tokens_whole {
        return None;
    }
    let normalizer = tokenizer.get_normalizer();
    let spaces_chinese = matches!(
        normalizer,
        Some(NormalizerWrapper::BertNormalizer(n)) if n.handle_chinese_chars
    );
    let (before_space, after_alphanumeric) = match tokenizer.get_pre_tokenizer() {
        _ if is_bert_pipeline(tokenizer) => (SpaceCut::AfterNonSpace, Some(false)),
        Some(PreTokenizerWrapper::ByteLevel(b)) if normalizer.is_none() && b.use_regex => {
            (SpaceCut::AfterNonSpace, Some(true))
        }
        Some(PreTokenizerWrapper::Sequence(s))
            if splits_at_whitespace_first(s.as_ref()) && keeps_whitespace_apart(normalizer) =>
        {
            (SpaceCut::AfterAsciiNonSpace, None)
        }
        _ => return None,
    };
    Some(CutRule {
        before_space,
        before_punctuation: after_alphanumeric.and_then(|after| {
            // BERT's split (`after` false) sees the spaces its normalizer put around them.
            punctuation_cut(added, after, !after && spaces_chinese)
        }),
    })
}

/// Cuts before punctuation (and Chinese characters, where `before_chinese`) for a pipeline
/// whose split isolates them (see the module's doc), unless an added token could straddle
/// one unseen.
fn punctuation_cut(
    added: &[MatchedToken],
    after_alphanumeric: bool,
    before_chinese: bool,
) -> Option<PunctuationCut> {
    // A word-only token matched in the raw text just before a Chinese character (`\w`)
    // is no match there, but is at the end of a prefix cut before it.
    let before_chinese =
        before_chinese && !added.iter().any(|t| t.single_word && !t.in_normalized_text);
    let holds_cut_character = |t: &MatchedToken| {
        t.content.bytes().any(is_cut_punctuation)
            || (before_chinese && t.content.chars().any(is_chinese))
    };
    let mut guarded = Vec::new();
    for token in added.iter().filter(|t| holds_cut_character(t)) {
        match token.in_normalized_text {
            // Its occurrences in the normalized text are not its bytes in the raw one.
            true => return None,
            false => guarded.push(token.content.as_bytes().into()),
        }
    }
    (guarded.len() <= MAX_GUARDED_TOKENS).then_some(PunctuationCut {
        after_alphanumeric,
        before_chinese,
        guarded,
    })
}

impl CutRule {
    /// Whether `text` may be cut before its byte `i` (not the first).
    fn allows(&self, text: &str, i: usize) -> bool {
        if !text.is_char_boundary(i) {
            return false;
        }
        let byte = text.as_bytes()[i];
        let before = || text[..i].chars().next_back();
        if CUT_BEFORE.contains(&byte) {
            return before().is_some_and(|c| match self.before_space {
                SpaceCut::AfterNonSpace => !c.is_whitespace(),
                SpaceCut::AfterAsciiNonSpace => c.is_ascii() && !c.is_ascii_whitespace(),
            });
        }
        let Some(punctuation) = &self.before_punctuation else {
            return false;
        };
        let chinese =
            || punctuation.before_chinese && text[i..].chars().next().is_some_and(is_chinese);
        (is_cut_punctuation(byte) || (!byte.is_ascii() && chinese()))
            && before().is_some_and(|c| match punctuation.after_alphanumeric {
                true => c.is_ascii_alphanumeric(),
                false => !c.is_whitespace(),
            })
            && !punctuation.straddled(text.as_bytes(), i)
    }
}

impl PunctuationCut {
    /// Whether an occurrence of a guarded added token starts before byte `i` and holds it
    /// (occurrences of valid UTF-8 start at character boundaries: no false ones).
    fn straddled(&self, bytes: &[u8], i: usize) -> bool {
        self.guarded.iter().any(|token| {
            (i.saturating_sub(token.len() - 1)..i).any(|s| bytes[s..].starts_with(token))
        })
    }
}

/// A split at whitespace, then Metaspace (which only marks the words it is given).
fn splits_at_whitespace_first(steps: &[PreTokenizerWrapper]) -> bool {
    matches!(
        steps,
        [
            PreTokenizerWrapper::WhitespaceSplit(_),
            PreTokenizerWrapper::Metaspace(_)
        ]
    )
}

/// No normalizer, or a SentencePiece table that maps each whitespace character a cut falls
/// before to whitespace (a table that dropped one, or mapped it to a letter, would join the
/// words on either side of a cut).
fn keeps_whitespace_apart(normalizer: Option<&NormalizerWrapper>) -> bool {
    let table = match normalizer {
        None => return true,
        Some(table @ NormalizerWrapper::Precompiled(_)) => table,
        Some(_) => return false,
    };
    CUT_BEFORE.iter().all(|&b| {
        let mut text = NormalizedString::from((b as char).to_string());
        table.normalize(&mut text).is_ok()
            && !text.get().is_empty()
            && text.get().chars().all(char::is_whitespace)
    })
}

/// A prefix of `text` holding at least `max_len` tokens of `tokenizer` (which neither
/// truncates nor pads), when `text` is long enough to be worth cutting and one exists.
pub(super) fn prefix_with_tokens<'t>(
    tokenizer: &Tokenizer,
    rule: &CutRule,
    text: &'t str,
    max_len: usize,
) -> Option<&'t str> {
    if text.len() < BYTES_PER_TOKEN_BEFORE_CUTTING * max_len.max(64) {
        return None;
    }
    // Padding or truncation would change the counts: `TextTokenizer` removes the file's.
    debug_assert!(tokenizer.get_padding().is_none() && tokenizer.get_truncation().is_none());
    let mut budget = FIRST_CUT_BYTES_PER_TOKEN * max_len.max(64);
    loop {
        let cut = (budget..text.len()).find(|&i| rule.allows(text, i))?;
        // Past half the text, the rest costs less than another try.
        if cut >= text.len() / 2 {
            return None;
        }
        let prefix = &text[..cut];
        // One the memory left cannot take is not tried: the whole text is then checked, and
        // refused, where the caller encodes it.
        if super::tokenizer_memory::too_long_for_memory(
            tokenizer.get_model(),
            prefix.len(),
            max_len,
        )
        .is_some()
        {
            return None;
        }
        let tokens = tokenizer.encode(prefix, false).ok()?.len();
        if tokens >= max_len {
            return Some(prefix);
        }
        // Never the same cut twice: past this one, four times as far.
        budget = (budget * 4).max(cut + 1);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokenizers::{AddedToken, Tokenizer, TruncationDirection};

    use super::super::added_tokens::matched_tokens;
    use super::super::test_texts::{open, random_texts, MINILM};
    use super::{cut_rule, prefix_with_tokens, CutRule};

    const ELECTRA: &str = "tests/fixtures/tiny-electra/model/tokenizer.json";
    const ROBERTA: &str = "tests/fixtures/tiny-roberta/model/tokenizer.json";

    /// Each token's id and where it lies in the text.
    fn tokens(t: &Tokenizer, text: &str) -> Vec<(u32, (usize, usize))> {
        let e = t.encode(text, false).unwrap();
        e.get_ids()
            .iter()
            .copied()
            .zip(e.get_offsets().iter().copied())
            .collect()
    }

    /// `path`'s tokenizer with a model that knows only its added tokens: each word of the
    /// split becomes one unknown token spanning it, so a cut that changes a word shows in
    /// the offsets, whatever a small vocabulary would have merged.
    fn words_only(relative: &str) -> Tokenizer {
        words_only_with(relative, |_| {})
    }

    /// [`words_only`] with `change` made to the tokenizer's JSON first.
    fn words_only_with(relative: &str, change: impl Fn(&mut serde_json::Value)) -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        change(&mut json);
        let mut vocab = serde_json::Map::new();
        for token in json["added_tokens"].as_array().unwrap() {
            vocab.insert(
                token["content"].as_str().unwrap().into(),
                token["id"].clone(),
            );
        }
        let unk = json["added_tokens"][0]["content"].clone();
        json["model"] = serde_json::json!({"type": "WordLevel", "vocab": vocab, "unk_token": unk});
        let mut t: Tokenizer = serde_json::from_value(json).unwrap();
        t.with_truncation(None).unwrap();
        t.with_padding(None);
        t
    }

    /// Pieces that meet at cuts in every way the rules weigh: punctuation of every kind (and
    /// `_`) after letters, digits, punctuation, whitespace, marks and CJK; added tokens that
    /// hold punctuation; contractions GPT-2's split keeps whole; a character NFD maps to `;`.
    #[rustfmt::skip]
    const PIECES: &[&str] = &[
        "a", "Zq", "7", "42", ".", ",", ";", "!", "?", "'", "\"", "-", "/", "(", ")", "[", "]",
        "{", "}", "<", ">", "#", "##", "$", "%", "&", "*", "+", "=", "@", "\\", "^", "`", "|",
        "~", ":", "_", "__", "'s", "'ll", "e\u{301}", "é", "\u{37e}", "中", "Σ", "İ", "🙂",
        " ", "\t", "\n", "  ", "[MASK]", "[CLS]", "[SEP", "<mask>", "<s>", "</s>", "x.y",
        "a-b", "foo", "http://e.com/a?b=c&d=e", "{\"k\":[1,2]}", "北京", "京", "\u{f900}",
        "中\u{301}", "\u{20000}", "한", "ア", "，", "。",
    ];

    /// Every cut the rule allows in `texts` gives a prefix whose tokens are the whole text's
    /// first tokens; returns how many cuts were before punctuation, and before other than
    /// ASCII (Chinese characters).
    fn check_every_cut(
        t: &Tokenizer,
        rule: &CutRule,
        texts: &[String],
        what: &str,
    ) -> (usize, usize) {
        let (mut punctuation_cuts, mut chinese_cuts) = (0, 0);
        for text in texts {
            let whole = tokens(t, text);
            for i in 1..text.len() {
                if !rule.allows(text, i) {
                    continue;
                }
                punctuation_cuts += usize::from(text.as_bytes()[i].is_ascii_punctuation());
                chinese_cuts += usize::from(!text.as_bytes()[i].is_ascii());
                let prefix = tokens(t, &text[..i]);
                // The last token may end sooner: whitespace an added token strips on its
                // right lies past the cut.
                let same = prefix.len() <= whole.len()
                    && prefix.iter().zip(&whole).enumerate().all(|(n, (p, w))| {
                        p == w
                            || (n + 1 == prefix.len()
                                && (p.0, p.1 .0) == (w.0, w.1 .0)
                                && text[p.1 .1..w.1 .1].chars().all(char::is_whitespace))
                    });
                assert!(
                    same,
                    "{what}: cut before byte {i} of {text:?}: {prefix:?} is not the start of \
                     {whole:?}"
                );
            }
        }
        (punctuation_cuts, chinese_cuts)
    }

    /// The rule `t` gets, as `TextTokenizer` builds it (right truncation).
    fn rule_of(t: &Tokenizer) -> Option<CutRule> {
        matched_tokens(t).and_then(|added| cut_rule(t, TruncationDirection::Right, &added))
    }

    fn rule(t: &Tokenizer) -> CutRule {
        rule_of(t).expect("a pipeline that is cut")
    }

    #[test]
    fn every_cut_before_punctuation_keeps_the_first_tokens() {
        let texts = random_texts(PIECES, 60, 40, 7);
        for (what, mut t) in [
            ("all-MiniLM-L6-v2 (BERT)", open(MINILM)),
            ("tiny-electra (BERT)", open(ELECTRA)),
            ("tiny-electra's split (BERT)", words_only(ELECTRA)),
            ("tiny-roberta (GPT-2)", open(ROBERTA)),
            ("tiny-roberta's split (GPT-2)", words_only(ROBERTA)),
        ] {
            let bert = what.contains("BERT");
            // BERT's cuts before Chinese characters, GPT-2's none.
            let enough = |(punctuation, chinese): (usize, usize), what: &str| {
                assert!(
                    punctuation > 500,
                    "{what}: {punctuation} cuts before punctuation"
                );
                assert_eq!(
                    chinese > 100,
                    bert,
                    "{what}: {chinese} before Chinese characters"
                );
            };
            enough(check_every_cut(&t, &rule(&t), &texts, what), what);
            // Added tokens matched in the raw text, holding punctuation, Chinese characters
            // or neither, stripping whitespace, single words matched after normalization.
            t.add_special_tokens(&[
                AddedToken::from("x.y", true),
                AddedToken::from("<mask>", true).lstrip(true).rstrip(true),
                AddedToken::from("&d=", true),
                AddedToken::from("北京", true),
            ]);
            t.add_tokens(&[AddedToken::from("foo", false).single_word(true)]);
            let added = format!("{what}, added tokens");
            enough(check_every_cut(&t, &rule(&t), &texts, &added), &added);
            // A single word matched in the raw text ends no match before a Chinese
            // character (`\w`), but does at the end of a prefix: no cuts before them.
            t.add_special_tokens(&[AddedToken::from("a-b", true).single_word(true)]);
            let word = format!("{what}, a single word");
            let (punctuation, chinese) = check_every_cut(&t, &rule(&t), &texts, &word);
            assert!(
                punctuation > 500 && chinese == 0,
                "{word}: {punctuation}, {chinese}"
            );
            // One matched after normalization: BERT's normalizer hides where it lies in the
            // raw text; without a normalizer it is its bytes there.
            t.add_tokens(&[AddedToken::from("Zq;", false)]);
            let normalized = rule(&t);
            check_every_cut(
                &t,
                &normalized,
                &texts,
                &format!("{what}, a normalized token"),
            );
            let bert = what.contains("BERT");
            assert_eq!(normalized.before_punctuation.is_none(), bert, "{what}");
            // One BERT's normalizer empties matches between every two characters: no cuts.
            t.add_tokens(&[AddedToken::from("\u{200b}", false)]);
            let emptied = rule_of(&t);
            assert_eq!(emptied.is_none(), bert, "{what}");
        }
        // Where BERT's normalizer leaves Chinese characters unspaced, they join words: no
        // cuts before them.
        let t = words_only_with(ELECTRA, |json| {
            json["normalizer"]["handle_chinese_chars"] = false.into();
        });
        let (punctuation, chinese) = check_every_cut(&t, &rule(&t), &texts, "unspaced");
        assert!(
            punctuation > 500 && chinese == 0,
            "unspaced: {punctuation}, {chinese}"
        );
    }

    /// A long text without whitespace (minified JSON) is cut, to the whole text's first
    /// tokens; before, it was tokenized whole (2.4 MB: 3 s and 0.9 GB).
    #[test]
    fn minified_json_is_cut() {
        let text: String = (0..400)
            .map(|i| format!("{{\"id\":{i},\"url\":\"https://e.com/a?q={i}&x=y\"}},"))
            .collect();
        assert!(!text.contains(char::is_whitespace));
        for path in [MINILM, ROBERTA] {
            let t = open(path);
            let prefix = prefix_with_tokens(&t, &rule(&t), &text, 64)
                .unwrap_or_else(|| panic!("{path:?}: not cut"));
            assert!(
                prefix.len() < text.len() / 8,
                "{path:?}: cut at {}",
                prefix.len()
            );
            let (cut, whole) = (tokens(&t, prefix), tokens(&t, &text));
            assert!(cut.len() >= 64, "{path:?}");
            assert_eq!(cut[..64], whole[..64], "{path:?}");
        }
    }
}
