//! Gradient accumulation: one optimizer step's batch run through the model in micro-batches,
//! so that a batch whose activations do not fit (on a GPU above all) still trains as that
//! batch. The step's loss is the batch's mean, so each micro-batch's mean loss and gradients
//! count with the weight `rows in it / rows in the batch`: the sum is the batch's gradient,
//! up to the order of the floating-point additions. The sums are made by the backward
//! itself ([`crate::autograd::Tape::backward_scaled_into`]).

use crate::autograd::{Gradients, Tape, Var};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::rng;

/// The rows of one step in micro-batches of at most `size` rows (all of them in one when
/// `size` is `None` or not below their count), in their order.
pub(crate) fn split(rows: &[usize], size: Option<usize>) -> std::slice::Chunks<'_, usize> {
    let size = size.unwrap_or(rows.len()).clamp(1, rows.len().max(1));
    rows.chunks(size)
}

/// The micro-batch size a run of `examples` in batches of `batch_size` splits its steps
/// by: `None` where every batch runs whole (no size given, or one no smaller than the
/// largest batch the data make).
pub fn in_use(
    micro_batch_size: Option<usize>,
    batch_size: usize,
    examples: usize,
) -> Option<usize> {
    micro_batch_size.filter(|&m| m < batch_size.min(examples))
}

/// Refuses micro-batches of `size` examples for batches of `batch_size`: none at all, or
/// more than the batch they split.
pub fn check_size(op: &'static str, size: usize, batch_size: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::invalid(
            op,
            "micro-batches of 0 examples (--micro-batch-size): give at least 1",
        ));
    }
    if size > batch_size {
        return Err(Error::invalid(
            op,
            format!(
                "micro-batches of {size} examples (--micro-batch-size) are larger than the \
                 batch of {batch_size} (--batch-size) they split: give at most the batch size"
            ),
        ));
    }
    Ok(())
}

/// Keeps the micro-batches' seeds apart from the seeds a [`crate::nn::DropoutPlan`] derives
/// from the step's seed for its own draws (`mix(seed, call)`).
const MICRO_BATCH_SEEDS: u64 = 0x6d69_6372_6f62_6174;

/// The dropout seed of micro-batch `index` of a step whose batch-wide seed is `step_seed`.
/// The first keeps the step's seed, so a step in one micro-batch draws the masks it always
/// drew; the others draw their own (the same seed would repeat the first one's masks, row
/// for row, in every micro-batch).
pub(crate) fn dropout_seed(step_seed: u64, index: usize) -> u64 {
    if index == 0 {
        step_seed
    } else {
        rng::mix(step_seed ^ MICRO_BATCH_SEEDS, index as u64)
    }
}

/// The weight of a micro-batch of `rows` in a step of `batch_rows`: the factor its
/// backward's seed takes ([`crate::autograd::Tape::backward_scaled`]).
pub(crate) fn weight(rows: usize, batch_rows: usize) -> f64 {
    rows as f64 / batch_rows as f64
}

/// Backward of one micro-batch's mean loss, weighted by `weight`: the first micro-batch's
/// gradients become the step's sums, a later one's are added to them as they are produced.
pub(crate) fn backward<B: Backend>(
    tape: &mut Tape<B>,
    loss: &Var<B>,
    weight: f64,
    sums: &mut Option<Gradients<B>>,
) -> Result<()> {
    match sums {
        None => *sums = Some(tape.backward_scaled(loss, weight)?),
        Some(sums) => tape.backward_scaled_into(loss, weight, sums)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_cover_the_rows_in_order() {
        let rows: Vec<usize> = (10..17).collect();
        let parts: Vec<&[usize]> = split(&rows, Some(3)).collect();
        assert_eq!(parts, [&[10, 11, 12][..], &[13, 14, 15], &[16]]);
        for size in [None, Some(7), Some(100)] {
            assert_eq!(split(&rows, size).collect::<Vec<_>>(), [&rows[..]]);
        }
        let weights: f64 = parts.iter().map(|p| weight(p.len(), rows.len())).sum();
        assert!((weights - 1.0).abs() < 1e-15);
    }

    #[test]
    fn only_later_micro_batches_draw_other_dropout_seeds() {
        assert_eq!(dropout_seed(77, 0), 77);
        let seeds: std::collections::BTreeSet<u64> = (0..64).map(|i| dropout_seed(77, i)).collect();
        assert_eq!(seeds.len(), 64);
    }
}
