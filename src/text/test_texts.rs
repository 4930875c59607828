//! What the tokenizer tests share: tokenizer files opened as they are, and random texts of
//! chosen pieces.

use std::path::Path;

use tokenizers::Tokenizer;

/// The tokenizer file at `relative` (to the crate's folder), neither truncating nor padding.
pub(super) fn open(relative: &str) -> Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(
        path.is_file(),
        "{}: run scripts/fetch_assets.sh first",
        path.display()
    );
    let mut t = Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{relative}: {e}"));
    t.with_truncation(None).unwrap();
    t.with_padding(None);
    t
}

/// The tokenizer of the real all-MiniLM-L6-v2 that `scripts/fetch_assets.sh` unpacks.
pub(super) const MINILM: &str = ".cache/models/all-MiniLM-L6-v2/tokenizer.json";

/// `count` texts of `per_text` pieces each, drawn from `pieces` by a seeded generator.
pub(super) fn random_texts<S: AsRef<str>>(
    pieces: &[S],
    count: usize,
    per_text: usize,
    seed: u64,
) -> Vec<String> {
    let mut state = seed;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    (0..count)
        .map(|_| {
            (0..per_text)
                .map(|_| pieces[next(pieces.len())].as_ref())
                .collect()
        })
        .collect()
}
