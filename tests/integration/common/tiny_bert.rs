//! A tiny random BERT at odd sizes, as named tensors, to build models and checkpoints from.

use std::collections::BTreeMap;
use std::path::Path;

use spafit::backend::Backend;
use spafit::checkpoint::{BertConfig, Checkpoint};
use spafit::rng::SplitMix;
use spafit::tensor::{Shape, Tensor};

use super::nonzero;

pub fn config(layers: usize) -> BertConfig {
    BertConfig {
        vocab_size: 29,
        hidden_size: 15,
        embedding_size: None,
        num_hidden_layers: layers,
        num_attention_heads: 3,
        intermediate_size: 13,
        max_position_embeddings: 11,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        classifier_dropout: None,
        initializer_range: 0.02,
        position_embedding_type: None,
        model_type: Some("bert".into()),
        tokenizer_class: None,
        pad_token_id: None,
        relative_attention_num_buckets: None,
        use_task_id: false,
        task_type_vocab_size: None,
        is_decoder: false,
        problem_type: None,
        id2label: Default::default(),
        deberta_keys: Default::default(),
    }
}

/// Every tensor of `BertModel` + pooler with Hugging Face names (`bert.` prefix).
pub fn tensors(c: &BertConfig, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let (h, i, w) = (c.hidden_size, c.intermediate_size, c.embedding_width());
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "bert.embeddings.word_embeddings.weight".into(),
            vec![c.vocab_size, w],
        ),
        (
            "bert.embeddings.position_embeddings.weight".into(),
            vec![c.max_position_embeddings, w],
        ),
        ("bert.embeddings.LayerNorm.weight".into(), vec![w]),
        ("bert.embeddings.LayerNorm.bias".into(), vec![w]),
        ("bert.pooler.dense.weight".into(), vec![h, h]),
        ("bert.pooler.dense.bias".into(), vec![h]),
    ];
    // Where it was always drawn, so that BERT's values stay what they were.
    if c.family().has_token_types() {
        shapes.insert(
            2,
            (
                "bert.embeddings.token_type_embeddings.weight".into(),
                vec![c.type_vocab_size, w],
            ),
        );
    }
    if c.projects_embeddings() {
        shapes.push(("bert.embeddings_project.weight".into(), vec![h, w]));
        shapes.push(("bert.embeddings_project.bias".into(), vec![h]));
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("bert.encoder.layer.{l}");
        for (m, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            shapes.push((format!("{p}.{m}.weight"), vec![out, inp]));
            shapes.push((format!("{p}.{m}.bias"), vec![out]));
        }
        for m in ["attention.output.LayerNorm", "output.LayerNorm"] {
            shapes.push((format!("{p}.{m}.weight"), vec![h]));
            shapes.push((format!("{p}.{m}.bias"), vec![h]));
        }
    }
    let mut rng = SplitMix::new(seed);
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let v = nonzero(&mut rng, shape.iter().product());
            let v = if name.ends_with("LayerNorm.weight") {
                v.iter().map(|x| 1.0 + 0.2 * x).collect()
            } else if name.ends_with("bias") {
                v.iter().map(|x| 0.1 * x).collect()
            } else {
                v.iter().map(|x| 0.5 * x).collect()
            };
            (name, (shape, v))
        })
        .collect()
}

/// A tensor source over `tensors`, checking shapes the way a checkpoint does.
pub fn source<'a, B: Backend>(
    backend: &'a B,
    tensors: &'a BTreeMap<String, (Vec<usize>, Vec<f64>)>,
) -> impl FnMut(&str, Shape) -> spafit::Result<Tensor<B>> + 'a {
    move |name, shape| {
        let (dims, values) = tensors
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!(dims.as_slice(), shape.dims(), "{name}");
        backend.tensor_from_f64(shape, values)
    }
}

/// Random non-zero adapters (unlike PEFT's zero B, so every gradient is non-trivial).
pub fn random_init<B: Backend>(
    backend: &B,
    seed: u64,
) -> impl FnMut(&str, Shape) -> spafit::Result<Tensor<B>> + '_ {
    let mut rng = SplitMix::new(seed);
    move |_, shape| {
        let v: Vec<f64> = nonzero(&mut rng, shape.numel())
            .iter()
            .map(|x| 0.3 * x)
            .collect();
        backend.tensor_from_f64(shape, &v)
    }
}

/// A tiny random BERT with the real tokenizer's vocabulary, written as a checkpoint.
pub fn write_checkpoint(dir: &Path) -> Checkpoint {
    write_checkpoint_holding(dir, |_| true)
}

/// [`write_checkpoint`] with only the tensors `keep` accepts.
pub fn write_checkpoint_holding(dir: &Path, keep: impl Fn(&str) -> bool) -> Checkpoint {
    write_checkpoint_with(dir, 64, keep)
}

/// [`write_checkpoint`] with a table of `positions` positions.
pub fn write_checkpoint_with_positions(dir: &Path, positions: usize) -> Checkpoint {
    write_checkpoint_with(dir, positions, |_| true)
}

fn write_checkpoint_with(dir: &Path, positions: usize, keep: impl Fn(&str) -> bool) -> Checkpoint {
    let config = BertConfig {
        vocab_size: 30522,
        max_position_embeddings: positions,
        ..config(2)
    };
    let tensors = tensors(&config, 11);
    let stored: Vec<super::family_fixture::Stored> = tensors
        .into_iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, (s, v))| (n, safetensors::Dtype::F64, s, v))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    super::family_fixture::write_tensors(&dir.join("model.safetensors"), &stored);
    std::fs::write(dir.join("config.json"), serde_json::to_string(&serde_json::json!({
        "vocab_size": 30522, "hidden_size": 15, "num_hidden_layers": 2, "num_attention_heads": 3,
        "intermediate_size": 13, "max_position_embeddings": positions, "type_vocab_size": 2
    })).unwrap()).unwrap();
    std::fs::copy(
        super::minilm_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    Checkpoint::open(dir).unwrap()
}

/// Adapters of other ranks and scales beside a LoRA config's (an imported PEFT adapter's
/// `rank_pattern` / `alpha_pattern`): layer 0's value at rank 3, layer 2's feed-forward
/// output at rank 1, for a plan with adapters there.
pub fn mixed_rank_overrides() -> Vec<spafit::nn::LoraOverride> {
    use spafit::nn::{LoraOverride, LoraTarget};
    vec![
        LoraOverride {
            layer: 0,
            target: LoraTarget::Value,
            rank: 3,
            alpha: 1.0,
        },
        LoraOverride {
            layer: 2,
            target: LoraTarget::Output,
            rank: 1,
            alpha: 4.0,
        },
    ]
}
