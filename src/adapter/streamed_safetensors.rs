//! A safetensors file written one tensor at a time. A run's saved state (the trained weights,
//! AdamW's two moments, the best weights) is three to four times the trained weights, and
//! building it whole in memory, once to hash its tensors and once more with the hash in the
//! header, held three copies of it beside the run while it was saved. Here each tensor is
//! made (copied to the host), hashed and written in turn; the header, whose metadata holds
//! the hash, is written first around a stand-in of the same length and again at the end.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use safetensors::Dtype;
use sha2::Digest;

use super::atomic::{hex, pause_mid_write, write_atomic_with};
use crate::error::{Error, Result};

/// A tensor's bytes (little-endian, as the file stores them), made when it is written.
pub(crate) type TensorBytes<'a> = Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>;

/// One tensor of a streamed file.
pub(crate) struct StreamedTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub dims: Vec<usize>,
    pub bytes: TensorBytes<'a>,
}

/// Writes `tensors` to `path` atomically (see `write_atomic`) as a safetensors file whose
/// header holds the metadata `metadata` makes from the SHA-256 (lowercase hex) of the data
/// section. At most one tensor's bytes are in memory at a time.
pub(crate) fn write_streamed(
    path: &Path,
    mut tensors: Vec<StreamedTensor<'_>>,
    metadata: impl Fn(&str) -> Result<HashMap<String, String>>,
) -> Result<()> {
    // safetensors' own order: the widest dtype first, so that each tensor starts aligned to
    // its elements; then by name.
    tensors.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    let mut entries = serde_json::Map::new();
    let mut makers = Vec::with_capacity(tensors.len());
    let mut end = 0usize;
    for t in tensors {
        let len = t
            .dims
            .iter()
            .try_fold(t.dtype.bitsize(), |n, &d| n.checked_mul(d))
            .map(|bits| bits.div_ceil(8))
            .ok_or_else(|| Error::invalid("safetensors", format!("`{}` is too large", t.name)))?;
        let offsets = [end, end + len];
        entries.insert(
            t.name,
            serde_json::json!({"dtype": t.dtype, "shape": t.dims, "data_offsets": offsets}),
        );
        makers.push((len, t.bytes));
        end += len;
    }
    let header = |sha: &str| -> Result<Vec<u8>> {
        let mut all = entries.clone();
        all.insert("__metadata__".into(), serde_json::json!(metadata(sha)?));
        let mut text =
            serde_json::to_vec(&all).map_err(|e| Error::invalid("safetensors", e.to_string()))?;
        // The data section starts 8-byte aligned, the header padded with spaces to it, as
        // safetensors pads it.
        text.resize(text.len().next_multiple_of(8), b' ');
        Ok(text)
    };
    let stand_in = header(&"0".repeat(64))?;
    write_atomic_with(path, |f| {
        let io = |error| Error::Io {
            path: path.to_path_buf(),
            error,
        };
        f.write_all(&(stand_in.len() as u64).to_le_bytes())
            .and_then(|()| f.write_all(&stand_in))
            .map_err(io)?;
        let mut hasher = sha2::Sha256::new();
        let (mut written, mut paused) = (0usize, false);
        for (len, make) in makers {
            let bytes = make()?;
            if bytes.len() != len {
                return Err(Error::invalid(
                    "safetensors",
                    format!("a tensor gave {} bytes for its {len}", bytes.len()),
                ));
            }
            hasher.update(&bytes);
            f.write_all(&bytes).map_err(io)?;
            written += len;
            if !paused && written * 2 >= end {
                pause_mid_write(f).map_err(io)?;
                paused = true;
            }
        }
        let header = header(&hex(&hasher.finalize()))?;
        if header.len() != stand_in.len() {
            return Err(Error::invalid(
                "safetensors",
                "the header changed length with the hash written into it",
            ));
        }
        f.seek(SeekFrom::Start(8))
            .and_then(|_| f.write_all(&header))
            .map_err(io)
    })
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
}
