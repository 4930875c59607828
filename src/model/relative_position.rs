//! MPNet's relative position bias: each layer adds, to head `h`'s score of query `i` for key
//! `j`, the value a shared table holds for `h` and the bucket of the distance `j − i`.
//!
//! The buckets are T5's, bidirectional, as transformers' `MPNetEncoder` computes them: 32 in
//! all whatever the table's size (its `compute_position_bias` never passes the config's
//! count), 16 per direction, distances below 8 exact, longer ones logarithmic up to 128 and
//! beyond. The logarithm is taken in f32, as transformers takes it: at a bucket's edge (16, 32,
//! 64) the side is decided by roundings, so the code follows torch's arithmetic rather than
//! the formula (which, in f64, happens to give the same buckets over ±5000).

use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::nn::Param;
use crate::tensor::Shape;

/// The buckets transformers' MPNet looks up (`num_buckets=32`, hard-coded).
pub const RELATIVE_POSITION_BUCKETS: usize = 32;

/// Distances from which the buckets stop growing.
const MAX_DISTANCE: i64 = 128;

/// The bucket of `distance` (`j − i`, key position less query position): transformers'
/// `MPNetEncoder.relative_position_bucket`.
pub fn relative_position_bucket(distance: i64) -> u32 {
    let per_side = (RELATIVE_POSITION_BUCKETS / 2) as i64;
    // transformers buckets `n = −distance`: keys before the query (n > 0) take the low half.
    let n = -distance;
    let side = if n < 0 { per_side } else { 0 };
    let n = n.abs();
    let max_exact = per_side / 2;
    let within_side = if n < max_exact {
        n
    } else {
        // f32 throughout, as torch computes `log(n.float() / max_exact) / math.log(16) * 8`
        // on a float32 tensor (the Python float becomes an f32 operand).
        let ratio = n as f32 / max_exact as f32;
        let range = (MAX_DISTANCE as f64 / max_exact as f64).ln() as f32;
        let scaled = ratio.ln() / range * (per_side - max_exact) as f32;
        (max_exact + scaled as i64).min(per_side - 1)
    };
    (side + within_side) as u32
}

/// The bucket of each relative distance of a `seq`-token sequence, in the order the
/// attention's position bias takes its rows: row `t` for distance `t − (seq − 1)`.
pub fn bucket_ids(seq: usize) -> Vec<u32> {
    let last = seq as i64 - 1;
    (0..crate::backend::shapes::position_bias_rows(seq))
        .map(|t| relative_position_bucket(t as i64 - last))
        .collect()
}

/// The position bias `[2·seq − 1, heads]` of a `seq`-token batch from `table`
/// (`[rows, heads]`, `bert.encoder.relative_attention_bias.weight`): its rows gathered by
/// [`bucket_ids`], on the tape, so that a trained table gets the sum of every layer's
/// gradient.
pub fn position_bias<B: Backend>(
    tape: &mut Tape<B>,
    table: &Param<B>,
    seq: usize,
) -> Result<Var<B>> {
    let ids = bucket_ids(seq);
    let ids = tape
        .backend()
        .tensor_from_u32(Shape::new([ids.len()]), &ids)?;
    let table = table.var(tape);
    tape.embedding(&table, &ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distances on both sides, near and far, and the edges the f32 logarithm decides
    /// (transformers' buckets, printed by torch, in `tests/fixtures/tiny-mpnet/buckets.json`,
    /// checked over ±1100 by the MPNet tests).
    #[test]
    fn buckets_follow_transformers() {
        for (distance, bucket) in [
            (0, 0),
            (-1, 1),
            (1, 17),
            (-7, 7),
            (7, 23),
            (-8, 8),
            (8, 24),
            (-127, 15),
            (-1000, 15),
            (1000, 31),
        ] {
            assert_eq!(relative_position_bucket(distance), bucket, "{distance}");
        }
        assert_eq!(bucket_ids(1), vec![0]);
        assert_eq!(bucket_ids(3), vec![2, 1, 0, 17, 18]);
    }
}
