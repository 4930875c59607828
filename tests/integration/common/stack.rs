//! A tiny stratified encoder: `layers` BERT layers at odd sizes, frozen below `n1`,
//! bias-only in `[n1, n2)`, LoRA + bias from `n2`, and a classifier on the first token.

use spafit::autograd::{Tape, Var};
use spafit::backend::Backend;
use spafit::nn::{
    DropoutPlan, EncoderLayer, EncoderLayerConfig, Linear, LoraConfig, LoraTarget, Param, Stratum,
};
use spafit::rng::SplitMix;
use spafit::tensor::{Shape, Tensor};

use super::nonzero;

pub const HIDDEN: usize = 15;
pub const HEADS: usize = 3;
pub const INTERMEDIATE: usize = 21;
pub const BATCH: usize = 3;
pub const SEQ: usize = 7;
/// Valid tokens per sequence: the last one has a fully padded tail of five.
pub const LENGTHS: [usize; BATCH] = [7, 4, 2];

pub struct Stack<B: Backend> {
    pub layers: Vec<EncoderLayer<B>>,
    pub classifier: Linear<B>,
}

pub struct Batch<B: Backend> {
    pub x: Tensor<B>,
    pub mask: Tensor<B>,
    pub first_tokens: Tensor<B>,
    pub labels: Tensor<B>,
}

/// Deterministic values per tensor name, independent of creation order and stack depth.
fn values(name: &str, n: usize, seed: u64) -> Vec<f64> {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    nonzero(&mut SplitMix::new(h ^ seed), n)
}

fn init<B: Backend>(
    backend: &B,
    seed: u64,
) -> impl FnMut(&str, Shape) -> spafit::Result<Tensor<B>> + '_ {
    move |name, shape| {
        let v = values(name, shape.numel(), seed);
        let v: Vec<f64> = if name.ends_with("LayerNorm.weight") {
            v.iter().map(|x| 1.0 + 0.2 * x).collect()
        } else if name.ends_with("bias") {
            v.iter().map(|x| 0.1 * x).collect()
        } else {
            v.iter().map(|x| 0.4 * x).collect()
        };
        backend.tensor_from_f64(shape, &v)
    }
}

pub fn lora_config(dropout: f64) -> LoraConfig {
    LoraConfig {
        rank: 3,
        alpha: 5.0,
        dropout,
        targets: LoraTarget::ALL.to_vec(),
        overrides: Vec::new(),
        unadapted: Vec::new(),
        dora: false,
    }
}

pub fn stratum(i: usize, n1: usize, n2: usize) -> Stratum {
    if i < n1 {
        Stratum::Frozen
    } else if i < n2 {
        Stratum::BiasOnly
    } else {
        Stratum::LoraAndBias
    }
}

pub fn build<B: Backend>(backend: &B, layers: usize, n1: usize, n2: usize, seed: u64) -> Stack<B> {
    let config = EncoderLayerConfig {
        hidden: HIDDEN,
        heads: HEADS,
        intermediate: INTERMEDIATE,
        layer_norm_eps: 1e-12,
        dropout_after_attention_output: true,
        activation: spafit::nn::FeedForwardActivation::Gelu,
        attention_scale: None,
    };
    let lora = lora_config(0.1);
    let layers = (0..layers)
        .map(|i| {
            let prefix = format!("encoder.layer.{i}");
            let mut layer = EncoderLayer::load(&prefix, config, init(backend, seed)).unwrap();
            layer
                .set_stratum(i, stratum(i, n1, n2), Some(&lora), init(backend, seed))
                .unwrap();
            layer
        })
        .collect();
    let mut make = init(backend, seed);
    let mut classifier = Linear::new(
        "classifier",
        make("classifier.weight", Shape::new([2, HIDDEN])).unwrap(),
        make("classifier.bias", Shape::new([2])).unwrap(),
    )
    .unwrap();
    classifier.weight.trainable = true;
    classifier.bias.trainable = true;
    Stack { layers, classifier }
}

pub fn batch<B: Backend>(backend: &B, seed: u64) -> Batch<B> {
    let x = nonzero(&mut SplitMix::new(seed ^ 0x5eed), BATCH * SEQ * HIDDEN);
    let mask: Vec<u32> = LENGTHS
        .iter()
        .flat_map(|&len| (0..SEQ).map(move |t| u32::from(t < len)))
        .collect();
    let first: Vec<u32> = (0..BATCH).map(|b| (b * SEQ) as u32).collect();
    Batch {
        x: backend
            .tensor_from_f64(Shape::new([BATCH * SEQ, HIDDEN]), &x)
            .unwrap(),
        mask: backend
            .tensor_from_u32(Shape::new([BATCH, SEQ]), &mask)
            .unwrap(),
        first_tokens: backend
            .tensor_from_u32(Shape::new([BATCH]), &first)
            .unwrap(),
        labels: backend
            .tensor_from_u32(Shape::new([BATCH]), &[1, 0, 1])
            .unwrap(),
    }
}

/// Training-mode dropout with a fixed seed: masks are a pure function of the seed, so the
/// loss stays a deterministic, differentiable function of the parameters.
pub fn train_dropouts() -> DropoutPlan {
    DropoutPlan::train(0.1, 0.1, 0.1, 1234)
}

impl<B: Backend> Stack<B> {
    /// The loss on `tape`, each layer's nodes under scope `layer.i`, the head under `head`.
    pub fn loss(&self, tape: &mut Tape<B>, batch: &Batch<B>, mut dropouts: DropoutPlan) -> Var<B> {
        let mut x = tape.constant(batch.x.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            tape.set_scope(&format!("layer.{i}"));
            x = layer.forward(tape, &x, &batch.mask, &mut dropouts).unwrap();
        }
        tape.set_scope("head");
        let first = tape.embedding(&x, &batch.first_tokens).unwrap();
        let logits = self
            .classifier
            .forward(tape, &first, &mut dropouts)
            .unwrap();
        tape.cross_entropy(&logits, &batch.labels).unwrap()
    }

    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v: Vec<&Param<B>> = self.layers.iter().flat_map(|l| l.params()).collect();
        v.extend(self.classifier.params());
        v
    }

    pub fn param_mut(&mut self, name: &str) -> &mut Param<B> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.params_mut())
            .chain(self.classifier.params_mut())
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))
    }

    pub fn trainable_names(&self) -> Vec<String> {
        spafit::nn::trainable_names(self.params())
    }
}
