//! DeBERTa-v2 and -v3 checkpoints (`model_type: "deberta-v2"`), against transformers + PEFT
//! in float64 on two tiny random models (`tests/fixtures/tiny-deberta/`, DeBERTa-v3's shape:
//! relative positions alone, logarithmic buckets within the texts, layer-normalised relative
//! embeddings, no segment table; `tests/fixtures/tiny-deberta-v2/`, DeBERTa-v2's: absolute
//! positions too, exact distances clamped within the texts, a segment table, a tanh pooler,
//! `cls_dropout`; each written by its `make_fixture.py`): tokens, logits, loss and every
//! parameter's gradient, the buckets, PEFT adapters both ways, merged checkpoints, the
//! command line, and the CUDA backend's refusal.

use crate::common;

use common::family_fixture::FamilyFixture;
use spafit::checkpoint::EncoderFamily;

/// The DeBERTa-v3-shaped fixture, or where `SPAFIT_DEBERTA_FIXTURE` says.
fn v3() -> FamilyFixture {
    FamilyFixture::new(
        "tiny-deberta",
        "SPAFIT_DEBERTA_FIXTURE",
        EncoderFamily::DebertaV2,
    )
}

/// The DeBERTa-v2-shaped fixture, or where `SPAFIT_DEBERTA_V2_FIXTURE` says.
fn v2() -> FamilyFixture {
    FamilyFixture::new(
        "tiny-deberta-v2",
        "SPAFIT_DEBERTA_V2_FIXTURE",
        EncoderFamily::DebertaV2,
    )
}

/// `DebertaV2Tokenizer` as transformers 5.24 rebuilds it from tokenizer.json: ids,
/// attention mask and segment ids (the second text's in segment 1).
#[test]
fn deberta_tokens_match_transformers() {
    for f in [v3(), v2()] {
        f.check_tokens(&f.checkpoint("model"));
    }
}

/// Full fine-tuning in f64 without dropout: logits, loss and the gradient of every parameter
/// transformers differentiates under its names (the relative embeddings and their LayerNorm
/// included), for single texts and pairs, on both shapes of DeBERTa.
#[test]
fn deberta_logits_loss_and_every_gradient_match_transformers() {
    for f in [v3(), v2()] {
        let grads = f.check_every_gradient(&f.checkpoint("model"));
        assert!(
            grads
                .iter()
                .any(|(n, g)| n == "bert.encoder.rel_embeddings.weight"
                    && g.iter().any(|&v| v != 0.0))
        );
    }
}
