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

/// The memory this process can still take, in bytes: the host's `MemAvailable` (Linux's
/// `/proc/meminfo`), less where the process is held to less — its control group's limit
/// (a container's) or its address-space limit (`ulimit -v`), beyond which an allocation
/// fails and aborts the process however much the host has free.
fn available_host_memory() -> Option<usize> {
    let host = meminfo_kib("/proc/meminfo", "MemAvailable:").and_then(|k| k.checked_mul(1024));
    [host, cgroup_room(), address_space_room()]
        .into_iter()
        .flatten()
        .min()
}

/// A `NAME: value kB` line's value.
fn meminfo_kib(file: &str, name: &str) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the process's control group may still charge before its limit (a container's):
/// the limit less its anonymous memory (the page cache it also charges is given back before
/// an allocation fails); `None` where there is no control group with a memory limit to read.
/// cgroup v2 (`memory.max`, `anon`) or v1 (`memory.limit_in_bytes`, `total_rss`); an
/// unlimited group reads as "max" or as a huge limit, which leaves the host's figure.
fn cgroup_room() -> Option<usize> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    // The group's own folder, or the mount's root where a container shows only its group.
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim().trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            for dir in [root.join(path), root.to_path_buf()] {
                candidates.push((dir, "memory.max", "anon"));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            for dir in [root.join("memory").join(path), root.join("memory")] {
                candidates.push((dir, "memory.limit_in_bytes", "total_rss"));
            }
        }
    }
    candidates.into_iter().find_map(|(dir, limit, used)| {
        let limit: usize = std::fs::read_to_string(dir.join(limit))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let used: usize = stat
            .lines()
            .find_map(|l| l.strip_prefix(used)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0);
        Some(limit.saturating_sub(used))
    })
}

/// Address space left under the soft `RLIMIT_AS` (`ulimit -v`): the limit less the
/// process's virtual size; `None` when unlimited.
fn address_space_room() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    // `Max address space  <soft> <hard> bytes`; the soft one applies.
    let soft: usize = line
        .trim_start_matches("Max address space")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let used = meminfo_kib("/proc/self/status", "VmSize:")?.checked_mul(1024)?;
    Some(soft.saturating_sub(used))
}
