//! Whether a batch's activations can fit in the host memory a backend computes in, checked
//! before the first allocation: a failed allocation aborts the process, where a refusal can
//! name the batch and what would fit.

use crate::backend::Backend;
use crate::checkpoint::BertConfig;
use crate::error::{Error, Result};

/// What a batch goes through: training keeps activations for backward, inference does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Forward and backward, activations kept on the tape for this many encoder layers
    /// ([`crate::model::BertClassifier::layers_on_tape`]).
    Training {
        /// Layers whose activations the tape keeps.
        layers_on_tape: usize,
    },
    /// Forward only, in evaluation mode.
    Inference,
}

/// Refuses a batch of `batch × seq_len` tokens the model cannot take (longer than its
/// position table) or whose memory cannot fit on the host. The host holds the batch's ids on
/// every backend, and its activations where the backend computes on the CPU (the CPU, and
/// the CUDA stand-in). The estimate is a floor: for training, ten hidden-sized f32 vectors
/// per token and layer on the tape, plus one layer's working set; for inference, one
/// layer's feed-forward and four hidden-sized vectors per token. `op` names the caller in
/// the error.
pub fn check_batch_memory<B: Backend>(
    backend: &B,
    config: &BertConfig,
    batch: usize,
    seq_len: usize,
    pass: Pass,
    op: &'static str,
) -> Result<()> {
    // Training runs the attention's backward, whose kernels may need more than the forward
    // the model was checked for when it loaded.
    if matches!(pass, Pass::Training { .. }) {
        backend.check_attention_head_dim(config.head_dim(), true)?;
    }
    if seq_len > config.max_position_embeddings {
        return Err(Error::invalid(
            op,
            format!(
                "sequences of {seq_len} tokens are longer than the model's {} positions",
                config.max_position_embeddings
            ),
        ));
    }
    let on_device = backend.name().starts_with("cuda:");
    let working_set = config
        .hidden_size
        .checked_mul(4)
        .and_then(|n| n.checked_add(config.intermediate_size))
        .and_then(|n| n.checked_mul(4));
    let per_token = match (on_device, pass) {
        (true, _) => Some(64),
        (false, Pass::Training { layers_on_tape }) => config
            .hidden_size
            .checked_mul(layers_on_tape)
            .and_then(|n| n.checked_mul(10 * 4))
            .zip(working_set)
            .and_then(|(kept, working)| kept.checked_add(working)),
        (false, Pass::Inference) => working_set,
    };
    let floor = batch
        .checked_mul(seq_len)
        .zip(per_token)
        .and_then(|(t, p)| t.checked_mul(p));
    let gib = |n: usize| format!("{:.1} GiB", n as f64 / 1073741824.0);
    match (floor, available_host_memory()) {
        (Some(need), Some(have)) if need <= have => Ok(()),
        (Some(_), None) => Ok(()),
        (need, have) => Err(Error::invalid(
            op,
            format!(
                "a batch of {batch} × {seq_len} tokens needs {}; {} is available ({})",
                need.map_or("more host memory than can be addressed".to_string(), |n| {
                    format!("at least {} of host memory", gib(n))
                }),
                have.map_or("an unknown amount".to_string(), gib),
                match pass {
                    Pass::Training { .. } => {
                        "a smaller batch needs less, or smaller micro-batches of the same \
                         batch: --micro-batch-size"
                    }
                    Pass::Inference => "a smaller batch size needs less",
                }
            ),
        )),
    }
}

/// `MemAvailable` of Linux's `/proc/meminfo`, in bytes.
fn available_host_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
