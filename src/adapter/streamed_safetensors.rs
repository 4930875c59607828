//! A safetensors file written one tensor at a time. A run's saved state (the trained weights,
//! AdamW's two moments, the best weights) is three to four times the trained weights, and an
//! adapter of a full fine-tuning is a whole model: built whole in memory, each held copies of
//! itself beside the run while it was saved. Here each tensor is made (copied to the host),
//! hashed and written in turn, so that at most one tensor's bytes are in memory at a time.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use safetensors::Dtype;
use sha2::Digest;

use super::atomic::{hex, pause_mid_write, stage_atomic_with, write_atomic_with, StagedWrite};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{stored_dtype, HostTensor, Tensor};

/// A tensor's bytes (little-endian, as the file stores them), made when it is written.
pub(crate) type TensorBytes<'a> = Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>;

/// One tensor of a streamed file.
pub(crate) struct StreamedTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub dims: Vec<usize>,
    pub bytes: TensorBytes<'a>,
}

impl<'a> StreamedTensor<'a> {
    /// `t` on `backend`, stored as `name` (f64 as F64, every other dtype as F32), copied to
    /// the host only when it is written.
    pub(crate) fn on_backend<B: Backend>(backend: &'a B, name: String, t: &'a Tensor<B>) -> Self {
        StreamedTensor {
            name,
            dtype: stored_dtype(t.dtype()),
            dims: t.shape().dims().to_vec(),
            bytes: Box::new(move || Ok(HostTensor::copy_of(backend, t)?.stored_bytes())),
        }
    }

    /// `t`, a host copy, stored as `name`.
    pub(crate) fn on_host(name: String, t: &'a HostTensor) -> Self {
        StreamedTensor {
            name,
            dtype: t.stored_dtype(),
            dims: t.shape().dims().to_vec(),
            bytes: Box::new(|| Ok(t.stored_bytes())),
        }
    }
}

/// Where each tensor goes in the data section, in the file's order.
struct Layout<'a> {
    /// The header's entries (`"name":{…}`), without metadata, in the order of the data.
    entries: Vec<String>,
    /// Each tensor's length in bytes and its maker, in the order of the data section.
    makers: Vec<(usize, TensorBytes<'a>)>,
    /// The data section's length.
    end: usize,
}

impl<'a> Layout<'a> {
    fn of(mut tensors: Vec<StreamedTensor<'a>>) -> Result<Self> {
        // safetensors' own order: the widest dtype first, so that each tensor starts aligned
        // to its elements; then by name.
        tensors.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
        let mut entries = Vec::with_capacity(tensors.len());
        let mut makers = Vec::with_capacity(tensors.len());
        let mut end = 0usize;
        for t in tensors {
            let len = t
                .dims
                .iter()
                .try_fold(t.dtype.bitsize(), |n, &d| n.checked_mul(d))
                .map(|bits| bits.div_ceil(8))
                .ok_or_else(|| {
                    Error::invalid("safetensors", format!("`{}` is too large", t.name))
                })?;
            let offsets = [end, end + len];
            // Spelled as safetensors' own writer spells it (the order of the data, each
            // entry's fields in this order), so that the same tensors give the same bytes
            // and hash whichever wrote them.
            let entry = serde_json::to_string(&t.name).and_then(|name| {
                Ok(format!(
                    "{name}:{{\"dtype\":{},\"shape\":{},\"data_offsets\":{}}}",
                    serde_json::to_string(&t.dtype)?,
                    serde_json::to_string(&t.dims)?,
                    serde_json::to_string(&offsets)?,
                ))
            });
            entries.push(entry.map_err(|e| Error::invalid("safetensors", e.to_string()))?);
            makers.push((len, t.bytes));
            end += len;
        }
        Ok(Layout {
            entries,
            makers,
            end,
        })
    }

    /// The header (without its 8-byte length), with `metadata`.
    fn header(&self, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
        let mut parts = Vec::with_capacity(self.entries.len() + 1);
        if let Some(metadata) = metadata {
            // In the order of its keys: the same metadata gives the same bytes.
            let sorted: std::collections::BTreeMap<_, _> = metadata.into_iter().collect();
            let json = serde_json::to_string(&sorted)
                .map_err(|e| Error::invalid("safetensors", e.to_string()))?;
            parts.push(format!("\"__metadata__\":{json}"));
        }
        parts.extend(self.entries.iter().cloned());
        let mut text = format!("{{{}}}", parts.join(",")).into_bytes();
        // The data section starts 8-byte aligned, the header padded with spaces to it, as
        // safetensors pads it.
        text.resize(text.len().next_multiple_of(8), b' ');
        Ok(text)
    }

    /// Makes each tensor in turn and gives its bytes to `take`, with whether the data
    /// section is half made, until `take` answers `false` (then `false`, else `true`).
    fn stream(&mut self, mut take: impl FnMut(&[u8], bool) -> Result<bool>) -> Result<bool> {
        let (mut made, mut halfway_told) = (0usize, false);
        for (len, make) in std::mem::take(&mut self.makers) {
            let bytes = make()?;
            if bytes.len() != len {
                return Err(Error::invalid(
                    "safetensors",
                    format!("a tensor gave {} bytes for its {len}", bytes.len()),
                ));
            }
            made += len;
            let halfway = !halfway_told && made * 2 >= self.end;
            halfway_told |= halfway;
            if !take(&bytes, halfway)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Writes `tensors` to `path` atomically (see `write_atomic`) as a safetensors file whose
/// header holds the metadata `metadata` makes from the SHA-256 (lowercase hex) of the data
/// section. The header is written first around a stand-in hash of the same length and again
/// at the end.
pub(crate) fn write_streamed(
    path: &Path,
    tensors: Vec<StreamedTensor<'_>>,
    metadata: impl Fn(&str) -> Result<HashMap<String, String>>,
) -> Result<()> {
    let mut layout = Layout::of(tensors)?;
    let stand_in = layout.header(Some(metadata(&"0".repeat(64))?))?;
    write_atomic_with(path, |f| {
        let mut data = sha2::Sha256::new();
        write_layout(f, path, &mut layout, &stand_in, Some(&mut data))?;
        let header = layout.header(Some(metadata(&hex(&data.finalize()))?))?;
        if header.len() != stand_in.len() {
            return Err(Error::invalid(
                "safetensors",
                "the header changed length with the hash written into it",
            ));
        }
        f.seek(SeekFrom::Start(8))
            .and_then(|_| f.write_all(&header))
            .map_err(|error| Error::Io {
                path: path.to_path_buf(),
                error,
            })
    })
}

/// Writes `tensors` beside `path` as a safetensors file without metadata, ready to be
/// committed (see `stage_atomic`), and gives the SHA-256 (lowercase hex) of the whole file.
pub(crate) fn stage_streamed(
    path: &Path,
    tensors: Vec<StreamedTensor<'_>>,
) -> Result<(StagedWrite, String)> {
    let mut layout = Layout::of(tensors)?;
    let header = layout.header(None)?;
    let mut file = sha2::Sha256::new();
    file.update((header.len() as u64).to_le_bytes());
    file.update(&header);
    let staged = stage_atomic_with(path, |f| {
        write_layout(f, path, &mut layout, &header, Some(&mut file))
    })?;
    Ok((staged, hex(&file.finalize())))
}

/// Creates `path` holding `tensors` as a safetensors file with `metadata` in its header,
/// synced: a file whose safety against kills is its writer's (a merge's staging folder).
pub(crate) fn write_streamed_synced(
    path: &Path,
    tensors: Vec<StreamedTensor<'_>>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let io = |error| Error::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut layout = Layout::of(tensors)?;
    let header = layout.header(Some(metadata))?;
    let mut f = std::fs::File::create(path).map_err(io)?;
    write_layout(&mut f, path, &mut layout, &header, None)?;
    f.sync_all().map_err(io)
}

/// `tensors` as a safetensors file without metadata, in memory: the bytes [`stage_streamed`]
/// writes.
pub(crate) fn streamed_bytes(tensors: Vec<StreamedTensor<'_>>) -> Result<Vec<u8>> {
    let mut layout = Layout::of(tensors)?;
    let header = layout.header(None)?;
    let mut bytes = Vec::with_capacity(8 + header.len() + layout.end);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    layout.stream(|tensor, _| {
        bytes.extend_from_slice(tensor);
        Ok(true)
    })?;
    Ok(bytes)
}

/// Writes the length of `header`, `header` and the tensors of `layout` into `f`, feeding the
/// tensors' bytes to `data` where there is one, and pausing halfway where a test asks
/// (`pause_mid_write`).
fn write_layout(
    f: &mut std::fs::File,
    path: &Path,
    layout: &mut Layout<'_>,
    header: &[u8],
    mut data: Option<&mut sha2::Sha256>,
) -> Result<()> {
    let io = |error| Error::Io {
        path: path.to_path_buf(),
        error,
    };
    f.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| f.write_all(header))
        .map_err(io)?;
    layout
        .stream(|bytes, halfway| {
            if let Some(data) = data.as_deref_mut() {
                data.update(bytes);
            }
            f.write_all(bytes).map_err(io)?;
            if halfway {
                pause_mid_write(f).map_err(io)?;
            }
            Ok(true)
        })
        .map(|_| ())
}

/// The SHA-256 (lowercase hex) of the file at `path` when it holds exactly what
/// [`stage_streamed`] would write of `tensors`; `None` when it holds anything else or cannot
/// be read. Tensors are made one at a time and only until the first difference.
pub(crate) fn streamed_file_sha256(
    path: &Path,
    tensors: Vec<StreamedTensor<'_>>,
) -> Result<Option<String>> {
    let mut layout = Layout::of(tensors)?;
    let header = layout.header(None)?;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let length = 8 + header.len() + layout.end;
    if file.metadata().map(|m| m.len()).ok() != u64::try_from(length).ok() {
        return Ok(None);
    }
    let mut hasher = sha2::Sha256::new();
    let mut read = Vec::new();
    let mut same = |expected: &[u8]| {
        read.resize(expected.len(), 0);
        let same = file.read_exact(&mut read).is_ok() && read == expected;
        if same {
            hasher.update(expected);
        }
        same
    };
    if !same(&(header.len() as u64).to_le_bytes()) || !same(&header) {
        return Ok(None);
    }
    let whole = layout.stream(|bytes, _| Ok(same(bytes)))?;
    Ok(whole.then(|| hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file reads back, through safetensors' own reader, as the tensors and metadata
    /// written, the hash in the metadata being that of the data section as stored.
    #[test]
    fn a_streamed_file_reads_back_with_the_hash_of_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.safetensors");
        let f32s: Vec<u8> = [1.5f32, -2.0, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f64s: Vec<u8> = [0.125f64, 7.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let tensor = |name: &str, dtype, dims: Vec<usize>, bytes: &Vec<u8>| StreamedTensor {
            name: name.into(),
            dtype,
            dims,
            bytes: Box::new({
                let bytes = bytes.clone();
                move || Ok(bytes)
            }),
        };
        let tensors = vec![
            tensor("b.f32", Dtype::F32, vec![3], &f32s),
            tensor("a.f64", Dtype::F64, vec![2, 1], &f64s),
            tensor("empty", Dtype::F32, vec![0, 4], &Vec::new()),
        ];
        write_streamed(&path, tensors, |sha| {
            Ok(HashMap::from([("hash".to_string(), sha.to_string())]))
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.tensor("b.f32").unwrap().data(), &f32s[..]);
        assert_eq!(file.tensor("a.f64").unwrap().data(), &f64s[..]);
        assert_eq!(file.tensor("a.f64").unwrap().shape(), &[2, 1]);
        assert_eq!(file.tensor("empty").unwrap().shape(), &[0, 4]);
        let (n, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!((8 + n) % 8, 0, "the data section starts aligned");
        let data = &bytes[8 + n..];
        assert_eq!(data.len(), f32s.len() + f64s.len());
        let recorded = &header.metadata().as_ref().unwrap()["hash"];
        assert_eq!(*recorded, super::super::atomic::sha256_hex(data));
        // No temporary is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A tensor that cannot be made (a device copy that fails) leaves the old file whole.
    #[test]
    fn a_tensor_that_fails_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.safetensors");
        std::fs::write(&path, b"old").unwrap();
        let tensors = vec![StreamedTensor {
            name: "t".into(),
            dtype: Dtype::F32,
            dims: vec![1],
            bytes: Box::new(|| Err(Error::invalid("copy", "the device is gone"))),
        }];
        let e = write_streamed(&path, tensors, |_| Ok(HashMap::new())).unwrap_err();
        assert!(e.to_string().contains("the device is gone"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A staged file is hashed whole (header included, as the adapter's manifest records it)
    /// and compared back a tensor at a time: the same tensors give that hash; a difference
    /// in a tensor gives none, and the tensors after it are not made (one that would fail
    /// is never asked); a file of another length is not read at all.
    #[test]
    fn a_staged_file_is_hashed_whole_and_compared_up_to_its_first_difference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapter.safetensors");
        let tensor = |name: &str, values: &[f32]| {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            StreamedTensor {
                name: name.into(),
                dtype: Dtype::F32,
                dims: vec![values.len()],
                bytes: Box::new(move || Ok(bytes)),
            }
        };
        let failing = |name: &str, len: usize| StreamedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            dims: vec![len],
            bytes: Box::new(|| Err(Error::invalid("copy", "the device is gone"))),
        };
        let (staged, sha) =
            stage_streamed(&path, vec![tensor("b", &[3.0, 4.0]), tensor("a", &[1.0])]).unwrap();
        staged.commit().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(sha, super::super::atomic::sha256_hex(&bytes));
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.tensor("b").unwrap().data(), &bytes[bytes.len() - 8..]);
        let same = vec![tensor("a", &[1.0]), tensor("b", &[3.0, 4.0])];
        assert_eq!(streamed_file_sha256(&path, same).unwrap(), Some(sha));
        // "a" comes first in the file: its difference ends the comparison.
        let first_differs = vec![tensor("a", &[1.5]), failing("b", 2)];
        assert_eq!(streamed_file_sha256(&path, first_differs).unwrap(), None);
        let longer = vec![failing("a", 2), failing("b", 2)];
        assert_eq!(streamed_file_sha256(&path, longer).unwrap(), None);
        // Up to the failing tensor all is the same: its error is the caller's.
        let fails = vec![tensor("a", &[1.0]), failing("b", 2)];
        let e = streamed_file_sha256(&path, fails).unwrap_err();
        assert!(e.to_string().contains("the device is gone"), "{e}");
        let missing = dir.path().join("none.safetensors");
        assert_eq!(
            streamed_file_sha256(&missing, vec![tensor("a", &[1.0])]).unwrap(),
            None
        );
    }

    /// The same tensors give the bytes safetensors' own writer gives, with metadata and
    /// without, on disk and in memory: a file written by either is recognised as unchanged
    /// by the other, and its hash is the same.
    #[test]
    fn a_streamed_file_is_the_file_safetensors_writes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("b.weight", Dtype::F32, vec![2, 3], (0..24).collect()),
            ("a.bias", Dtype::F32, vec![3], (24..36).collect()),
            ("a\"quoted\u{e9}", Dtype::F64, vec![1], (36..44).collect()),
            ("half", Dtype::BF16, vec![3], (44..50).collect()),
            ("empty", Dtype::F32, vec![0, 2], Vec::new()),
        ];
        let streamed = || {
            data.iter()
                .map(|(name, dtype, dims, bytes)| StreamedTensor {
                    name: name.to_string(),
                    dtype: *dtype,
                    dims: dims.clone(),
                    bytes: Box::new(move || Ok(bytes.clone())),
                })
                .collect()
        };
        let views = || {
            data.iter()
                .map(|(name, dtype, dims, bytes)| {
                    let view = safetensors::tensor::TensorView::new(*dtype, dims.clone(), bytes);
                    (name.to_string(), view.unwrap())
                })
                .collect::<Vec<_>>()
        };
        let path = dir.path().join("plain.safetensors");
        let (staged, _) = stage_streamed(&path, streamed()).unwrap();
        staged.commit().unwrap();
        let theirs = safetensors::tensor::serialize(views(), None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), theirs);
        assert_eq!(streamed_bytes(streamed()).unwrap(), theirs);
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let path = dir.path().join("with_metadata.safetensors");
        write_streamed_synced(&path, streamed(), metadata.clone()).unwrap();
        let theirs = safetensors::tensor::serialize(views(), Some(metadata)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), theirs);
    }
}
