//! Words past WordPiece's length limit, shortened before tokenizing. WordPiece gives a word of
//! more than `max_input_chars_per_word` characters (100 in BERT's vocabularies) one unknown
//! token, however long it is, but tokenizers still normalizes, splits and offsets all of it:
//! a 3 MB hex dump in one cell cost 1.3 s and 0.4 GB, with no whitespace or punctuation for
//! the long-text cut (`long_text`) to cut at, and a pair's texts are tokenized whole anyway.
//!
//! Under BERT's pipeline (its normalizer maps each ASCII letter or digit to one character,
//! its split never ends a word inside a run of them), a run of ASCII letters and digits longer
//! than the limit lies in a word that is one unknown token, and still does when the run is
//! shortened to one character past the limit: the words around it, and where it starts and
//! ends, stay as they were. Unless an added token could match across the run's edge or inside
//! it (one that starts or ends with a letter or digit, or holds a run as long, or one the
//! normalizer empties, which matches between every two characters), which the run's removed
//! part could make or unmake: then texts are tokenized as they are.

use std::borrow::Cow;

use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;

use super::added_tokens::MatchedToken;
use super::long_text::is_bert_pipeline;

/// The length runs of ASCII letters and digits are shortened to (one past WordPiece's limit),
/// where `tokenizer`'s pipeline, with `added` its added tokens as `matched_tokens` gives
/// them, makes that exact (see the module's doc).
pub(super) fn shortened_run_length(tokenizer: &Tokenizer, added: &[MatchedToken]) -> Option<usize> {
    let ModelWrapper::WordPiece(model) = tokenizer.get_model() else {
        return None;
    };
    let keep = model.max_input_chars_per_word.checked_add(1)?;
    let reaches_into_runs = |content: &str| {
        let (first, last) = (content.bytes().next(), content.bytes().next_back());
        [first, last]
            .into_iter()
            .any(|b| b.is_some_and(|b| b.is_ascii_alphanumeric()))
            || content.len() >= keep
    };
    let tokens_stay_apart = added.iter().all(|token| !reaches_into_runs(&token.content));
    (is_bert_pipeline(tokenizer) && tokens_stay_apart).then_some(keep)
}

/// `text` with every run of ASCII letters and digits longer than `keep` cut to its first
/// `keep` (borrowed where none is).
pub(super) fn shorten_runs(text: &str, keep: usize) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut shortened = String::new();
    // Bytes of `text` before `copied` are in `shortened` (or left out of it).
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i - start > keep {
            // ASCII bytes bound the run: both ends are character boundaries.
            shortened.push_str(&text[copied..start + keep]);
            copied = i;
        }
    }
    match copied {
        0 => Cow::Borrowed(text),
        _ => {
            shortened.push_str(&text[copied..]);
            Cow::Owned(shortened)
        }
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::{AddedToken, Tokenizer};

    use super::super::added_tokens::matched_tokens;
    use super::super::test_texts::{open, random_texts, MINILM};
    use super::{shorten_runs, shortened_run_length};

    /// The length `t` gets, as `TextTokenizer` builds it.
    fn run_length(t: &Tokenizer) -> Option<usize> {
        matched_tokens(t).and_then(|added| shortened_run_length(t, &added))
    }

    fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
        t.encode(text, false).unwrap().get_ids().to_vec()
    }

    /// Pieces around long runs: everything that could join a run to its neighbours or part
    /// it (marks, characters the normalizer removes or spaces, CJK, punctuation, `_`, added
    /// tokens' strings) and runs just under, at and past the limit.
    fn texts(count: usize, seed: u64) -> Vec<String> {
        let run = |n: usize, at: usize| -> String {
            (0..n)
                .map(|i| b"0123456789abcdefXYZ"[(i * 7 + at) % 19] as char)
                .collect()
        };
        let pieces: Vec<String> = [99, 100, 101, 102, 150, 5000]
            .iter()
            .enumerate()
            .map(|(at, &n)| run(n, at))
            .chain(
                [
                    "a", "Q7", " ", "\t", "\n", ".", "-", "_", "'", "\u{301}", "é", "\u{0}",
                    "\u{ad}", "\u{200b}", "\u{fffd}", "中", "İ", "🙂", "[MASK]", "[CLS]", "##",
                    "ab[SEP]", "x.y",
                ]
                .map(String::from),
            )
            .collect();
        random_texts(&pieces, count, 12, seed)
    }

    #[test]
    fn shortened_runs_encode_as_the_whole_runs() {
        let texts = texts(300, 11);
        for file in [MINILM, "tests/fixtures/tiny-electra/model/tokenizer.json"] {
            let mut t = open(file);
            let keep = run_length(&t).unwrap_or_else(|| panic!("{file}"));
            assert_eq!(keep, 101, "{file}");
            let mut shortened = 0;
            for text in &texts {
                let short = shorten_runs(text, keep);
                shortened += usize::from(short.len() < text.len());
                assert_eq!(ids(&t, &short), ids(&t, text), "{file}: {text:?}");
            }
            assert!(shortened > 100, "{file}: {shortened} texts shortened");
            // One character fewer and a run kept at the limit tokenizes into pieces (in a
            // vocabulary that has them: tiny-electra's knows too few to): the texts tell the
            // two apart.
            let changed = texts
                .iter()
                .filter(|text| ids(&t, &shorten_runs(text, keep - 1)) != ids(&t, text))
                .count();
            if file.contains("MiniLM") {
                assert!(changed > 10, "{file}: {changed} texts changed at the limit");
            }
            // Added tokens that stay apart from runs leave the rule on; one that ends with a
            // letter (it could match at a run's edge), or is as long as a run kept, turns it
            // off.
            t.add_special_tokens(&[AddedToken::from("<x.y>", true)]);
            t.add_tokens(&[AddedToken::from("[é]", false)]);
            assert_eq!(run_length(&t), Some(keep), "{file}");
            for token in ["#ab", "9)", &"#".repeat(keep)] {
                let mut t = t.clone();
                t.add_special_tokens(&[AddedToken::from(token, true)]);
                assert_eq!(run_length(&t), None, "{file}: {token}");
            }
            // Nor one the normalizer empties (a zero-width space): it matches between every
            // two characters, and each letter of a run becomes a word of its own.
            t.add_tokens(&[AddedToken::from("\u{200b}", false)]);
            assert_eq!(run_length(&t), None, "{file}");
            let run = format!("x {} y", "ab".repeat(100));
            assert_ne!(ids(&t, &shorten_runs(&run, keep)), ids(&t, &run), "{file}");
        }
        // Byte-level BPE has no length limit: its words are tokenized as they are.
        let roberta = open("tests/fixtures/tiny-roberta/model/tokenizer.json");
        assert_eq!(run_length(&roberta), None);
    }

    #[test]
    fn only_runs_past_the_length_are_shortened() {
        assert_eq!(shorten_runs("ab cd", 1), "a c");
        assert!(matches!(
            shorten_runs("ab-cd é", 2),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(shorten_runs("é12345.6789中", 3), "é123.678中");
        assert_eq!(shorten_runs("x", 0), "");
    }
}
