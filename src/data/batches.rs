//! Grouping examples into batches: length-bucketed and shuffled for training, sorted by
//! length for evaluation, so padding stays small either way.

use crate::rng::SplitMix;

/// Training batches of example indices for one epoch: shuffled, then within windows of
/// `bucket` batches sorted by length so each batch holds similar lengths, then the batch
/// order shuffled again. Deterministic in `seed`.
pub fn training_batches(
    lengths: &[usize],
    batch_size: usize,
    bucket: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = SplitMix::new(seed);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    shuffle(&mut order, &mut rng);
    // Saturating: a batch size near usize::MAX would wrap the window to a few rows.
    let window = batch_size.saturating_mul(bucket.max(1));
    let mut batches = Vec::new();
    for chunk in order.chunks_mut(window) {
        chunk.sort_by_key(|&i| lengths[i]);
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    shuffle(&mut batches, &mut rng);
    batches
}

/// Evaluation batches: indices sorted by length, cut into batches.
pub fn evaluation_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Fisher–Yates.
pub fn shuffle<T>(v: &mut [T], rng: &mut SplitMix) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_and_buckets_are_tight() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 61 + 3).collect();
        let batches = training_batches(&lengths, 32, 20, 5);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let padded: usize = batches
            .iter()
            .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len())
            .sum();
        let real: usize = lengths.iter().sum();
        assert!(
            padded < real * 11 / 10,
            "bucketing leaves {padded} padded vs {real} real tokens"
        );
        assert_eq!(batches, training_batches(&lengths, 32, 20, 5));
        assert_ne!(batches, training_batches(&lengths, 32, 20, 6));
    }
}
