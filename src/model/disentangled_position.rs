//! DeBERTa-v2's relative positions: which row of the shared relative embeddings a query and
//! a key read, and those rows on the tape.
//!
//! transformers numbers the distance `i − j` (query less key), buckets it logarithmically
//! beyond half the buckets where `position_buckets` is set (`make_log_bucket_position`, in
//! f32 as torch computes it), and reads row `clamp(bucket + span, 0, 2·span − 1)`, for the
//! content-to-position and the position-to-content term alike (the bucket of `j − i` is the
//! negation of that of `i − j`). A sequence of `seq` tokens reads a contiguous band of rows,
//! so only those go through the layers' maps: at most `2·seq − 1` rows (and at most
//! `2·span`), where transformers maps all `2·span`.

use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::checkpoint::{BertConfig, RelativePositions};
use crate::error::Result;
use crate::nn::{LayerNorm, Param};
use crate::tensor::{Shape, Tensor};

/// transformers' `make_log_bucket_position` for one distance: the distance itself within
/// half the buckets, beyond that `sign · (⌈ln(|d|/mid) / ln((max − 1)/mid) · (mid − 1)⌉ + mid)`
/// with `mid = buckets / 2`, in f32 as torch takes it (the quotients become f32 tensors).
pub fn log_bucket(distance: i64, buckets: usize, max_position: usize) -> i64 {
    let mid = (buckets / 2) as i64;
    if distance.abs() <= mid {
        return distance;
    }
    let ratio = distance.abs() as f32 / mid as f32;
    let range = ((max_position as f64 - 1.0) / mid as f64) as f32;
    let log = (ratio.ln() / range.ln() * (mid - 1) as f32).ceil() + mid as f32;
    distance.signum() * log as i64
}

/// The row of the relative embeddings that distance `i − j` reads.
pub fn relative_row(distance: i64, positions: &RelativePositions) -> usize {
    let bucket = match positions.buckets {
        Some((buckets, max_position)) => log_bucket(distance, buckets, max_position),
        None => distance,
    };
    let last = positions.table_rows() as i64 - 1;
    bucket.saturating_add(positions.span as i64).clamp(0, last) as usize
}

/// The band of rows a `seq`-token sequence reads: its first row and, for each query `i` and
/// key `j`, the row less that first one (`[seq·seq]`, query-major); the band's length is
/// one past the largest.
pub fn relative_band(seq: usize, positions: &RelativePositions) -> (usize, Vec<u32>) {
    // One logarithm per distance (`i − j + seq − 1`), not per pair.
    let last = seq as i64 - 1;
    let by_distance: Vec<usize> = (-last..=last)
        .map(|distance| relative_row(distance, positions))
        .collect();
    let first = by_distance.iter().copied().min().unwrap_or(0);
    let index = (0..seq * seq)
        .map(|at| (by_distance[at / seq + last as usize - at % seq] - first) as u32)
        .collect();
    (first, index)
}

/// The relative embeddings a layer's attention reads for one batch: the band's rows
/// `[rows, hidden]` (layer-normalised where the config says) and which row each (query,
/// key) pair reads (`[seq, seq]` `U32`).
#[derive(Debug)]
pub struct RelativeBand<B: Backend> {
    /// `[rows, hidden]`.
    pub embeddings: Var<B>,
    /// `[seq, seq]` `U32`, below `rows`.
    pub rows: Tensor<B>,
}

/// DeBERTa-v2's relative embeddings (`bert.encoder.rel_embeddings`) and their LayerNorm
/// (`bert.encoder.LayerNorm`), shared by every layer. They train under full fine-tuning
/// only, as the encoder's own tensors outside any stratum.
#[derive(Clone, Debug)]
pub struct RelativeEmbeddings<B: Backend> {
    /// `[2·span, hidden]`.
    pub table: Param<B>,
    /// Where `norm_rel_ebd` holds `layer_norm`.
    pub norm: Option<LayerNorm<B>>,
    /// The distances told apart.
    pub positions: RelativePositions,
}

impl<B: Backend> RelativeEmbeddings<B> {
    /// Loads them for `config` where its attention is disentangled; `None` otherwise.
    pub fn load(
        config: &BertConfig,
        tensor: &mut dyn FnMut(&str, Shape) -> Result<Tensor<B>>,
    ) -> Result<Option<Self>> {
        let Some(positions) = config
            .deberta()
            .filter(|d| d.disentangles())
            .and_then(|d| d.relative)
        else {
            return Ok(None);
        };
        let h = config.hidden_size;
        let name = "bert.encoder.rel_embeddings.weight";
        let table = tensor(name, Shape::new([positions.table_rows(), h]))?;
        let norm = match positions.normalised {
            true => {
                let gamma = tensor("bert.encoder.LayerNorm.weight", Shape::new([h]))?;
                let beta = tensor("bert.encoder.LayerNorm.bias", Shape::new([h]))?;
                Some(LayerNorm::new(
                    "bert.encoder.LayerNorm",
                    gamma,
                    beta,
                    config.layer_norm_eps,
                ))
            }
            false => None,
        };
        Ok(Some(RelativeEmbeddings {
            table: Param::new(name.to_string(), table, false),
            norm,
            positions,
        }))
    }

    /// The band of rows a `seq`-token batch reads, on the tape (gathered, then
    /// layer-normalised: the norm works row by row, so the band's rows are those of the
    /// whole normalised table).
    pub fn band(&self, tape: &mut Tape<B>, seq: usize) -> Result<RelativeBand<B>> {
        let (first, index) = relative_band(seq, &self.positions);
        let count = index.iter().max().map_or(1, |&m| m as usize + 1);
        let ids: Vec<u32> = (first..first + count).map(|r| r as u32).collect();
        let backend = tape.backend().clone();
        let ids = backend.tensor_from_u32(Shape::new([count]), &ids)?;
        let table = self.table.var(tape);
        let rows = tape.embedding(&table, &ids)?;
        let embeddings = match &self.norm {
            Some(norm) => norm.forward(tape, &rows)?,
            None => rows,
        };
        Ok(RelativeBand {
            embeddings,
            rows: backend.tensor_from_u32(Shape::new([seq, seq]), &index)?,
        })
    }

    /// Every parameter.
    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v = vec![&self.table];
        v.extend(self.norm.iter().flat_map(|n| [&n.weight, &n.bias]));
        v
    }

    /// Every parameter, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = vec![&mut self.table];
        v.extend(
            self.norm
                .iter_mut()
                .flat_map(|n| [&mut n.weight, &mut n.bias]),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3() -> RelativePositions {
        RelativePositions {
            span: 256,
            buckets: Some((256, 512)),
            normalised: true,
        }
    }

    /// DeBERTa-v3's buckets: exact to ±128, logarithmic to ±255 at 511 (transformers' values,
    /// printed by torch; the fixture's `buckets.json` holds every distance to ±1100).
    #[test]
    fn buckets_and_rows_follow_transformers() {
        for (d, b) in [
            (0, 0),
            (5, 5),
            (128, 128),
            (129, 129),
            (200, 169),
            (511, 255),
            (512, 256),
            (1000, 317),
        ] {
            assert_eq!(log_bucket(d, 256, 512), b, "{d}");
            assert_eq!(log_bucket(-d, 256, 512), -b, "{d}");
        }
        let p = v3();
        assert_eq!(relative_row(0, &p), 256);
        assert_eq!(relative_row(-1000, &p), 0);
        assert_eq!(relative_row(3, &p), 259);
        let (first, index) = relative_band(3, &p);
        assert_eq!(first, 254);
        assert_eq!(index, vec![2, 1, 0, 3, 2, 1, 4, 3, 2]);
    }
}
