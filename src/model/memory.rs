//! Whether a batch's activations can fit in the host memory a backend computes in, checked
//! before the first allocation: a failed allocation aborts the process, where a refusal can
//! name the batch and what would fit.

use crate::backend::Backend;
use crate::checkpoint::BertConfig;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// What needs less memory, for an out-of-memory message: `changes` (settings of what ran
/// out, e.g. "a smaller --batch-size") and `--dtype bf16` where it stores frozen linear
/// weights in half the memory (`frozen_weights`: the model has some, and `backend` keeps
/// them at full precision), as one list ("a, b or c"); `None` when there is nothing to
/// change but the device.
pub fn memory_alternatives<B: Backend>(
    backend: &B,
    changes: &[&str],
    frozen_weights: bool,
) -> Option<String> {
    let mut all = changes.to_vec();
    if frozen_weights && backend.frozen_dtype() != DType::BF16 {
        all.push("--dtype bf16 (the frozen weights in half the memory)");
    }
    match all.split_last() {
        None => None,
        Some((only, [])) => Some(only.to_string()),
        Some((last, rest)) => Some(format!("{} or {last}", rest.join(", "))),
    }
}

/// `loaded` (a model, an adapter), with an out-of-memory error saying that the weights ran
/// out as they loaded, which no batch setting shrinks; `frozen_weights`: the model freezes
/// some linear weights, which `--dtype bf16` would store in half the memory.
pub fn while_loading<B: Backend, T>(
    backend: &B,
    frozen_weights: bool,
    loaded: Result<T>,
) -> Result<T> {
    loaded.map_err(|e| {
        e.in_memory_context(|| {
            let what = "This was loading the model's weights, which must fit before any batch runs";
            match memory_alternatives(backend, &[], frozen_weights) {
                Some(less) => format!("{what}: {less} needs less"),
                None if frozen_weights => format!("{what} (the frozen ones are in bf16 already)"),
                None => what.to_string(),
            }
        })
    })
}

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
/// the CUDA stand-in). The estimate is a floor: for training, seven hidden-sized f32 vectors
/// per token and layer on the tape (a BitFit layer keeps ~9 on the CPU and ~8 in bf16 mode,
/// where q, k and v are kept in bf16; full fine-tuning more), plus one layer's working set; for inference, one
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
    if seq_len > config.max_tokens() {
        return Err(Error::invalid(
            op,
            format!(
                "sequences of {seq_len} tokens are longer than the model's {} positions",
                config.max_tokens()
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
            .and_then(|n| n.checked_mul(7 * 4))
            .zip(working_set)
            .and_then(|(kept, working)| kept.checked_add(working)),
        (false, Pass::Inference) => working_set,
    };
    let floor = batch
        .checked_mul(seq_len)
        .zip(per_token)
        .and_then(|(t, p)| t.checked_mul(p));
    let available = available_host_memory();
    let gib = |n: usize, decimals: usize| format!("{:.decimals$} GiB", n as f64 / 1073741824.0);
    // As many decimals as tell need and room apart ("needs 1.1 GiB; 1.1 GiB" says nothing).
    let decimals = match (floor, available) {
        (Some(need), Some((have, _))) => {
            (1..4).find(|&d| gib(need, d) != gib(have, d)).unwrap_or(3)
        }
        _ => 1,
    };
    let gib = |n: usize| gib(n, decimals);
    match (floor, available) {
        (Some(need), Some((have, _))) if need <= have => Ok(()),
        (Some(_), None) => Ok(()),
        (need, have) => Err(Error::invalid(
            op,
            format!(
                "a batch of {batch} × {seq_len} tokens needs {}; {} is available{} ({})",
                need.map_or("more host memory than can be addressed".to_string(), |n| {
                    format!("at least {} of host memory", gib(n))
                }),
                have.map_or("an unknown amount".to_string(), |(n, _)| gib(n)),
                have.map_or("", |(_, under)| under),
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

/// The memory this process can still take, in bytes, and under what: the host's
/// `MemAvailable` (Linux's `/proc/meminfo`), or less where the process is held to less — its
/// control group's limit (a container's) or its address-space limit (`ulimit -v`), beyond
/// which an allocation fails and aborts the process however much the host has free. Memory
/// the allocator holds freed (a training step's activations, kept for the next step) counts
/// as room: the next allocations reuse it. Lenient where unsure: the check refuses only what
/// cannot fit.
pub(crate) fn available_host_memory() -> Option<(usize, &'static str)> {
    let host = proc_kib("/proc/meminfo", "MemAvailable:").and_then(|k| k.checked_mul(1024));
    let reusable = allocator_free_bytes();
    [
        (host, ""),
        (cgroup_room(), " under the control group's memory limit"),
        (
            address_space_room(),
            " under the address-space limit (ulimit -v)",
        ),
    ]
    .into_iter()
    .filter_map(|(room, under)| Some((room?.saturating_add(reusable), under)))
    .min_by_key(|(bytes, _)| *bytes)
}

/// The value of a `NAME: value kB` line of a Linux `/proc` file (`/proc/meminfo`,
/// `/proc/self/status`).
pub(crate) fn proc_kib(file: &str, name: &str) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes glibc's allocator holds freed in its heaps (all arenas), ready to reuse.
fn allocator_free_bytes() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        unsafe { libc::mallinfo2() }.fordblks
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

/// What the process's control group may still charge before its limit: the least limit of
/// the group and its ancestors, less the group's anonymous memory (the page cache it also
/// charges is given back before an allocation fails); `None` where no limit can be read.
/// cgroup v2 (`memory.max` up the tree, `anon`) or v1 (`hierarchical_memory_limit`, which
/// already takes the ancestors' in, `total_rss`); an unlimited group reads as "max" or as a
/// huge limit, which leaves the host's figure.
fn cgroup_room() -> Option<usize> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).ok();
    let stat = |dir: &std::path::Path, key: &str| -> Option<usize> {
        read(dir.join("memory.stat"))?
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    };
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim().trim_start_matches('/');
        // The group's own folder, or the mount's root where a container shows only its group.
        if id == "0" && controllers.is_empty() {
            for dir in [root.join(path), root.to_path_buf()] {
                let limit = dir
                    .ancestors()
                    .take_while(|d| d.starts_with(root))
                    .filter_map(|d| read(d.join("memory.max"))?.trim().parse::<usize>().ok())
                    .min();
                if let Some(limit) = limit {
                    return Some(limit.saturating_sub(stat(&dir, "anon").unwrap_or(0)));
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            for dir in [root.join("memory").join(path), root.join("memory")] {
                let own_limit = read(dir.join("memory.limit_in_bytes"))
                    .and_then(|t| t.trim().parse::<usize>().ok());
                let limit = own_limit
                    .into_iter()
                    .chain(stat(&dir, "hierarchical_memory_limit"))
                    .min();
                if let Some(limit) = limit {
                    return Some(limit.saturating_sub(stat(&dir, "total_rss").unwrap_or(0)));
                }
            }
        }
    }
    None
}

/// Address space left under the soft `RLIMIT_AS` (`ulimit -v`): the limit less the
/// process's virtual size, plus the inaccessible anonymous reservations within it (the
/// allocator's arenas grow into theirs without growing it); `None` when unlimited.
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
    let used = proc_kib("/proc/self/status", "VmSize:")?.checked_mul(1024)?;
    Some(soft.saturating_sub(used).saturating_add(reserved_bytes()))
}

/// Bytes of the anonymous mappings without access (`---p`, no file) in `/proc/self/maps`.
fn reserved_bytes() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            // offset, device, inode, then a path for file mappings.
            if perms != "---p" || fields.nth(3).is_some() {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let (start, end) = (
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            );
            end.checked_sub(start)
        })
        .sum()
}
