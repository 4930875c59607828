use crate::backend::Backend;
use crate::error::Result;
use crate::rng::SplitMix;
use crate::tensor::{Shape, Tensor};

/// PEFT's default adapter initialisation: `A` from kaiming-uniform with `a = √5` (uniform in
/// `±1/√in`), `B` zero, so a fresh adapter leaves the model unchanged. Each tensor draws from
/// `(seed, name)`, so the same seed gives the same adapters whatever the creation order.
/// DoRA's magnitudes start at one here: PEFT's, the norms of the weight's rows, need the
/// weight, and [`crate::model::BertClassifier::initialise_dora_magnitudes`] sets them (the
/// `*_for_plan` constructors call it).
pub fn peft_lora_init<B: Backend>(
    backend: &B,
    seed: u64,
) -> impl FnMut(&str, Shape) -> Result<Tensor<B>> + '_ {
    move |name, shape| {
        if name.ends_with("lora_B.weight") {
            return backend.zeros(shape);
        }
        if name.ends_with("lora_magnitude_vector") {
            return backend.tensor_from_f64(shape.clone(), &vec![1.0; shape.numel()]);
        }
        let fan_in = shape.last_dim().max(1) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let mut rng = SplitMix::new(seed ^ init_hash(name));
        let values: Vec<f64> = (0..shape.numel())
            .map(|_| rng.uniform_in(-bound, bound))
            .collect();
        backend.tensor_from_f64(shape, &values)
    }
}

/// FNV-1a of a name: a stable per-tensor seed offset.
pub(crate) fn init_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
