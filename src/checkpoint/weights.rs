//! Reading tensors out of `model.safetensors` (or the shards a
//! `model.safetensors.index.json` lists), in whatever float dtype they were saved.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use super::EncoderFamily;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

/// What a weight file holding NaN or an infinity is told (the adapter import recognises it).
pub const NON_FINITE_WEIGHTS: &str = "a model with non-finite weights gives no usable outputs";

/// The tensors of one safetensors file, or of the shards of a sharded checkpoint, held in
/// memory.
pub struct WeightsFile {
    /// The file, or the index of a sharded checkpoint: what errors about the whole name.
    path: PathBuf,
    shards: Vec<Shard>,
    names: Vec<String>,
    /// For each of `names`, its shard.
    shard_of: Vec<usize>,
    /// Name → index into `names`: a file of many tensors is looked up once per tensor, so
    /// linear scans would make loading quadratic in the tensor count.
    position_of: HashMap<String, usize>,
    sha256: Identity,
    encoder_sha256: Identity,
    encoder_fingerprint: Identity,
    /// How the file names what spafit names the BERT way ([`WeightsFile::resolve`]).
    family: EncoderFamily,
}

struct Shard {
    path: PathBuf,
    data: ShardData,
    /// The header, parsed and validated once (its offsets fit `bytes`): parsing it again per
    /// tensor would make loading quadratic in the header's size.
    header: Metadata,
    /// Where the data section starts in `bytes`.
    data_start: usize,
}

/// Where a shard's tensor bytes are.
enum ShardData {
    /// The whole file, read into memory (a pipe, a file that did not parse, bytes given).
    InMemory(Vec<u8>),
    /// On disk, each tensor read when asked for: a model loads holding its file's bytes
    /// one tensor at a time, not beside all its weights.
    OnDisk(OpenFile),
    /// Given back ([`WeightsFile::release_tensor_data`]).
    Released,
}

/// A file read a piece at a time, and what it was like when it was opened: a file written
/// over in place while it is read (a copy onto it, another run saving there) would mix two
/// files' tensors, or hash one and load the other; every read checks it is still as opened.
struct OpenFile {
    file: std::fs::File,
    opened_as: FileStamp,
}

/// A file's length and time of last change.
#[derive(PartialEq, Eq, Debug)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(file: &std::fs::File) -> std::io::Result<Self> {
        file.metadata().map(|m| Self::from(&m))
    }
}

impl From<&std::fs::Metadata> for FileStamp {
    fn from(m: &std::fs::Metadata) -> Self {
        FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
        }
    }
}

impl OpenFile {
    /// Reads `buf.len()` bytes at `at`, when the file is as it was opened before and after.
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.check_unchanged()?;
        self.file.read_exact_at(buf, at)?;
        self.check_unchanged()
    }

    fn check_unchanged(&self) -> std::io::Result<()> {
        if FileStamp::of(&self.file)? == self.opened_as {
            return Ok(());
        }
        Err(std::io::Error::other(
            "the file changed on disk after it was opened (written over while it was read?): \
             its tensors and identity would mix two files; open it again once it is written",
        ))
    }
}

/// An identity of the file ([`WeightsFile::sha256`] and its kin), made when first asked
/// for: the hash, or why the file could not be read for it (kept, and told at every ask: an
/// identity made of an error would be recorded with an adapter and match no base).
type Identity = std::sync::OnceLock<std::result::Result<String, UnreadForIdentity>>;

/// A read that failed while a file was hashed, kept to be told again.
#[derive(Clone, Debug)]
struct UnreadForIdentity {
    path: PathBuf,
    kind: std::io::ErrorKind,
    message: String,
}

impl UnreadForIdentity {
    fn new(path: &Path, error: &std::io::Error) -> Self {
        UnreadForIdentity {
            path: path.to_path_buf(),
            kind: error.kind(),
            message: format!("could not be read to make its identity (SHA-256): {error}"),
        }
    }

    fn to_error(&self) -> Error {
        Error::Io {
            path: self.path.clone(),
            error: std::io::Error::new(self.kind, self.message.clone()),
        }
    }
}

/// The identity `cell` holds, made by `make` the first time.
fn identity(
    cell: &Identity,
    make: impl FnOnce() -> std::result::Result<String, UnreadForIdentity>,
) -> Result<&str> {
    match cell.get_or_init(make) {
        Ok(hash) => Ok(hash),
        Err(unread) => Err(unread.to_error()),
    }
}

/// The most bytes of header read from disk, safetensors' own limit (`MAX_HEADER_SIZE`): a
/// larger one is read whole, and judged by safetensors' reader, whose messages say what is
/// wrong with it.
const MAX_HEADER_ON_DISK: u64 = 100_000_000;

impl Shard {
    fn read(path: &Path) -> Result<Shard> {
        if path.is_dir() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                detail: "a folder where a safetensors file should be".into(),
            });
        }
        if let Some(shard) = Shard::on_disk(path) {
            return Ok(shard);
        }
        let bytes = crate::text_file::read_file(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        Shard::parse(path, bytes)
    }

    fn parse(path: &Path, bytes: Vec<u8>) -> Result<Shard> {
        let (header_len, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::Format {
                path: path.to_path_buf(),
                detail: format!(
                    "not a valid safetensors file: {}",
                    misfit_tensor(&bytes).unwrap_or_else(|| e.to_string())
                ),
            })?;
        Ok(Shard {
            path: path.to_path_buf(),
            data: ShardData::InMemory(bytes),
            header,
            data_start: 8 + header_len,
        })
    }

    /// A regular file whose header parses and whose length is what the header says, read
    /// no further than its header; `None` for anything else, which is then read whole.
    fn on_disk(path: &Path) -> Option<Shard> {
        // Not opened unless a regular file: opening a pipe takes what its writer gives.
        std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        let file = std::fs::File::open(path).ok()?;
        let opened = file.metadata().ok().filter(|m| m.is_file())?;
        let file = OpenFile {
            opened_as: FileStamp::from(&opened),
            file,
        };
        let len = file.opened_as.len;
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0).ok()?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_ON_DISK || n > len.checked_sub(8)? {
            return None;
        }
        let mut header = vec![0u8; usize::try_from(n).ok()?];
        file.read_exact_at(&mut header, 8).ok()?;
        // Deserialized, the header is validated as `SafeTensors::read_metadata` validates it;
        // the file's length is checked here.
        let header: Metadata = serde_json::from_slice(&header).ok()?;
        if u64::try_from(header.data_len()).ok()?.checked_add(8 + n)? != len {
            return None;
        }
        Some(Shard {
            path: path.to_path_buf(),
            data: ShardData::OnDisk(file),
            header,
            data_start: usize::try_from(8 + n).ok()?,
        })
    }

    /// The stored bytes of `view` (a tensor of this shard).
    fn data_of(&self, view: &StoredTensor<'_>) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        let (start, end) = (
            self.data_start + view.offsets.0,
            self.data_start + view.offsets.1,
        );
        match &self.data {
            // In bounds: the header's offsets were checked against the file's length.
            ShardData::InMemory(bytes) => Ok(std::borrow::Cow::Borrowed(&bytes[start..end])),
            ShardData::OnDisk(file) => {
                let mut bytes = vec![0u8; end - start];
                file.read_exact_at(&mut bytes, start as u64)?;
                Ok(std::borrow::Cow::Owned(bytes))
            }
            ShardData::Released => Err(given_back()),
        }
    }

    /// SHA-256 (hex) of the file's bytes from `at` to its end, read from disk a piece at a
    /// time where it was not read whole.
    fn sha256_from(&self, at: usize) -> std::io::Result<String> {
        match &self.data {
            ShardData::InMemory(bytes) => Ok(crate::adapter::sha256_hex(&bytes[at..])),
            ShardData::OnDisk(file) => streamed_sha256(file, at as u64, file.opened_as.len),
            ShardData::Released => Err(given_back()),
        }
    }

    /// SHA-256 (hex) of the whole file.
    fn sha256(&self) -> std::result::Result<String, UnreadForIdentity> {
        self.sha256_from(0)
            .map_err(|e| UnreadForIdentity::new(&self.path, &e))
    }

    /// The tensor names, in the order of their data.
    fn names(&self) -> Vec<String> {
        self.header.offset_keys()
    }

    /// Tensor `name` of this shard.
    fn tensor(&self, name: &str) -> Option<StoredTensor<'_>> {
        let info: &TensorInfo = self.header.info(name)?;
        let (start, end) = info.data_offsets;
        Some(StoredTensor {
            dtype: info.dtype,
            shape: &info.shape,
            offsets: (start, end),
        })
    }
}

/// Why a tensor of a file given back ([`WeightsFile::release_tensor_data`]) cannot be read.
fn given_back() -> std::io::Error {
    std::io::Error::other("the file's bytes were given back once the model was loaded")
}

/// SHA-256 (hex) of the bytes of `file` from `at` to `len`, read a piece at a time.
fn streamed_sha256(file: &OpenFile, mut at: u64, len: u64) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut piece = vec![0u8; 4 << 20];
    while at < len {
        let n = usize::try_from((len - at).min(piece.len() as u64)).unwrap_or(piece.len());
        file.read_exact_at(&mut piece[..n], at)?;
        hasher.update(&piece[..n]);
        at += n as u64;
    }
    Ok(crate::adapter::hex(&hasher.finalize()))
}

/// One tensor as stored: its dtype, shape and where its little-endian bytes lie in the data
/// section ([`Shard::data_of`] reads them).
struct StoredTensor<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    offsets: (usize, usize),
}

/// A summary (the tensors' bytes stay out of it): the file, its shards and tensor count.
impl std::fmt::Debug for WeightsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightsFile")
            .field("path", &self.path)
            .field("shards", &self.shards.len())
            .field("tensors", &self.names.len())
            .finish_non_exhaustive()
    }
}

impl WeightsFile {
    /// Reads and indexes `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let shard = Shard::read(path)?;
        Self::from_shards(path, vec![shard])
    }

    /// Indexes safetensors `bytes`; `path` names them in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let shard = Shard::parse(path, bytes)?;
        Self::from_shards(path, vec![shard])
    }

    /// Reads a sharded checkpoint: the index `model.safetensors.index.json`, whose
    /// `weight_map` names each tensor's file, and every file it names (beside the index).
    /// A tensor the map places in a file that lacks it, or a tensor found in two files, is
    /// an error naming both.
    pub fn open_sharded(index: &Path) -> Result<Self> {
        let format = |detail: String| Error::Format {
            path: index.to_path_buf(),
            detail,
        };
        let text = crate::text_file::read_utf8(index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format(format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| format("no `weight_map` object (tensor name → file)".into()))?;
        let mut placed: Vec<(&str, &str)> = Vec::with_capacity(map.len());
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                format(format!(
                    "`weight_map` entry `{name}` is {file}, not a file name"
                ))
            })?;
            if Path::new(file).components().count() != 1 || file == ".." || file == "." {
                return Err(format(format!(
                    "`weight_map` places `{name}` in `{file}`: shards must be files beside the index"
                )));
            }
            placed.push((name, file));
        }
        // Sorted, so the identity (SHA-256) of a sharded checkpoint does not depend on the
        // order the index lists its tensors in.
        let mut files: Vec<&str> = placed.iter().map(|&(_, f)| f).collect();
        files.sort_unstable();
        files.dedup();
        if files.is_empty() {
            return Err(format("`weight_map` is empty".into()));
        }
        let dir = index.parent().unwrap_or(Path::new("."));
        let shards = files
            .iter()
            .map(|f| {
                let shard = dir.join(f);
                if !shard.exists() {
                    return Err(format(format!(
                        "`weight_map` names the shard `{f}`, which is not beside the index \
                         (a download or copy that stopped part way?)"
                    )));
                }
                Shard::read(&shard)
            })
            .collect::<Result<Vec<_>>>()?;
        let weights = Self::from_shards(index, shards)?;
        for (name, file) in placed {
            let holder = weights
                .position(name)
                .map(|i| &weights.shards[weights.shard_of[i]].path);
            if holder.and_then(|p| p.file_name()) != Some(std::ffi::OsStr::new(file)) {
                return Err(format(format!(
                    "`weight_map` places `{name}` in `{file}`, which does not hold it"
                )));
            }
        }
        Ok(weights)
    }

    fn from_shards(path: &Path, shards: Vec<Shard>) -> Result<Self> {
        let mut names: Vec<String> = Vec::new();
        let mut shard_of: Vec<usize> = Vec::new();
        let mut position_of: HashMap<String, usize> = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.names() {
                if let Some(&j) = position_of.get(&name) {
                    return Err(Error::Format {
                        path: path.to_path_buf(),
                        detail: format!(
                            "tensor `{name}` is in both {} and {}",
                            shards[shard_of[j]].path.display(),
                            shard.path.display()
                        ),
                    });
                }
                position_of.insert(name.clone(), names.len());
                names.push(name);
                shard_of.push(i);
            }
        }
        // Two spellings of one tensor (`gamma` beside `weight`, `bert.x` beside `x`) leave
        // which one the model holds to a lookup order that transformers does not share.
        let mut canonical: Vec<(String, &str)> = names
            .iter()
            .map(|n| (canonical_name(n), n.as_str()))
            .collect();
        canonical.sort_unstable();
        if let Some(pair) = canonical.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::Format {
                path: path.to_path_buf(),
                detail: format!(
                    "tensors `{}` and `{}` are both `{}` under two spellings; which one the \
                     model should hold is ambiguous: keep one",
                    pair[0].1, pair[1].1, pair[0].0
                ),
            });
        }
        Ok(WeightsFile {
            path: path.to_path_buf(),
            shards,
            names,
            shard_of,
            position_of,
            sha256: Identity::new(),
            encoder_sha256: Identity::new(),
            encoder_fingerprint: Identity::new(),
            family: EncoderFamily::Bert,
        })
    }

    /// SHA-256 (hex), computed once: the identity of a base model. For one file, that of its
    /// bytes; for a sharded checkpoint, that of its shards' names and SHA-256s in name order.
    /// A file read from disk is read again for it; an error reading it is this call's error,
    /// and every later call's.
    pub fn sha256(&self) -> Result<&str> {
        identity(&self.sha256, || match self.shards.as_slice() {
            [one] => one.sha256(),
            shards => {
                let mut listing = String::new();
                for shard in shards {
                    let name = shard.path.file_name().unwrap_or_default();
                    listing.push_str(&format!("{} {}\n", name.to_string_lossy(), shard.sha256()?));
                }
                Ok(crate::adapter::sha256_hex(listing.as_bytes()))
            }
        })
    }

    /// SHA-256 (hex), computed once, of the encoder's stored tensors: every float tensor under
    /// `embeddings.`, `encoder.` or `pooler.` (with or without the `bert.` prefix, LayerNorms
    /// under either naming; for a RoBERTa or ELECTRA file, [`WeightsFile::read_as`], not the
    /// pooler, which their classifiers never read, and ELECTRA's `embeddings_project.`), in
    /// the order of their canonical names, each as its name, dtype,
    /// shape and bytes. The identity of the base an adapter was trained on: unlike
    /// [`WeightsFile::sha256`] it stays the same when the same tensors are saved again in
    /// shards, in another order, with other header metadata, beside other heads or buffers,
    /// and changes with any stored value or dtype. An error reading the file is this call's
    /// error, and every later call's.
    pub fn encoder_sha256(&self) -> Result<&str> {
        identity(&self.encoder_sha256, || self.hash_encoder(|_| true))
    }

    /// A cheap fingerprint of the tensors [`WeightsFile::encoder_sha256`] covers: each one's
    /// canonical name, dtype and shape, and the values of the one-dimensional ones (biases,
    /// LayerNorms: a few hundred KiB in BERT-base). It tells two checkpoints apart without
    /// reading every weight: a model records its base's as it loads, and saving or training
    /// against other base weights is refused ([`crate::model::BertClassifier::check_base`]).
    /// Two files that differ only in the values of matrices (a base with a LoRA merged into
    /// its query and value maps, say) share it: [`WeightsFile::encoder_sha256`] tells those
    /// apart, at the cost of reading every weight.
    pub fn encoder_fingerprint(&self) -> Result<&str> {
        identity(&self.encoder_fingerprint, || {
            self.hash_encoder(|shape| shape.len() <= 1)
        })
    }

    /// SHA-256 (hex) of the encoder's tensors, as [`WeightsFile::encoder_sha256`] says, with
    /// the values of those whose shape `with_values` accepts.
    fn hash_encoder(
        &self,
        with_values: impl Fn(&[usize]) -> bool,
    ) -> std::result::Result<String, UnreadForIdentity> {
        use sha2::Digest;
        let mut entries: Vec<(String, usize, &str)> = self
            .names
            .iter()
            .zip(&self.shard_of)
            .filter_map(|(name, &shard)| {
                let canonical = canonical_name(name);
                // RoBERTa's sequence classifiers never read the pooler its files may
                // hold (and transformers drops it when it saves one again).
                let parts: &[&str] = match self.family {
                    // DeBERTa-v2's context pooler sits outside the base's prefix
                    // (`pooler.dense`), but is the encoder's as BERT's is.
                    EncoderFamily::Bert | EncoderFamily::Ernie | EncoderFamily::DebertaV2 => {
                        &["embeddings.", "encoder.", "pooler."]
                    }
                    EncoderFamily::Roberta | EncoderFamily::Mpnet => &["embeddings.", "encoder."],
                    EncoderFamily::Electra => &["embeddings.", "embeddings_project.", "encoder."],
                    EncoderFamily::DistilBert => &["embeddings.", "transformer."],
                };
                let encoder = parts.iter().any(|p| canonical.starts_with(p));
                encoder.then_some((canonical, shard, name.as_str()))
            })
            .collect();
        entries.sort();
        let mut hasher = sha2::Sha256::new();
        for (canonical, shard, stored) in entries {
            // Every name was read from its shard's header, so a miss cannot happen.
            let Some(view) = self.shards[shard].tensor(stored) else {
                continue;
            };
            // Spelled out, not `Debug`: the identity must not change with a dependency.
            let dtype = match view.dtype {
                Dtype::F16 => "F16",
                Dtype::BF16 => "BF16",
                Dtype::F32 => "F32",
                Dtype::F64 => "F64",
                _ => continue,
            };
            let dims: Vec<String> = view.shape.iter().map(usize::to_string).collect();
            let header = format!("{canonical} {dtype} [{}]\n", dims.join(", "));
            hasher.update(header.as_bytes());
            if with_values(view.shape) {
                let shard = &self.shards[shard];
                let data = shard
                    .data_of(&view)
                    .map_err(|e| UnreadForIdentity::new(&shard.path, &e))?;
                hasher.update(&data);
            }
        }
        Ok(crate::adapter::hex(&hasher.finalize()))
    }

    /// The string metadata in the header of a single file (`__metadata__`).
    pub(crate) fn header_metadata(&self) -> Option<&HashMap<String, String>> {
        match self.shards.as_slice() {
            [one] => one.header.metadata().as_ref(),
            _ => None,
        }
    }

    /// SHA-256 (hex) of a single file's data section (the bytes after its header), read from
    /// disk a piece at a time where it was not read whole.
    pub(crate) fn data_sha256(&self) -> std::io::Result<String> {
        match self.shards.as_slice() {
            [one] => one.sha256_from(one.data_start),
            _ => Err(std::io::Error::other(
                "a sharded checkpoint has no one data section",
            )),
        }
    }

    /// Gives back the memory holding the file's bytes once the model is loaded from them,
    /// keeping what a run asks of its base later: names, shapes and the three identities
    /// ([`WeightsFile::sha256`], [`WeightsFile::encoder_sha256`],
    /// [`WeightsFile::encoder_fingerprint`]), computed first. Held for the whole of a run, the
    /// bytes doubled the model's weights in memory. Reading a tensor afterwards is an error.
    /// An error reading the file for its identities is returned, the bytes kept.
    pub fn release_tensor_data(&mut self) -> Result<()> {
        self.sha256()?;
        self.encoder_sha256()?;
        self.encoder_fingerprint()?;
        for shard in &mut self.shards {
            shard.data = ShardData::Released;
        }
        Ok(())
    }

    /// The file, or the index of a sharded checkpoint.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name, over all shards.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn position(&self, stored: &str) -> Option<usize> {
        self.position_of.get(stored).copied()
    }

    /// The family whose names the file is read by ([`WeightsFile::read_as`]; BERT unless
    /// set, as [`crate::checkpoint::Checkpoint::open`] sets it from `config.json`).
    pub fn family(&self) -> EncoderFamily {
        self.family
    }

    /// Reads the file as a checkpoint of `family`: [`WeightsFile::resolve`] finds spafit's
    /// (BERT's) names under that family's names.
    pub fn read_as(mut self, family: EncoderFamily) -> Self {
        self.family = family;
        // Which tensors are the encoder's depends on the family: hashes taken before are not
        // this reading's.
        self.encoder_sha256 = Identity::new();
        self.encoder_fingerprint = Identity::new();
        self
    }

    /// The name under which `name` is stored: as is, or without the `bert.` prefix that
    /// `BertModel` checkpoints lack and `BertFor…` checkpoints have; and for a LayerNorm, under
    /// the TensorFlow-era names `gamma` / `beta` as well (bert-base-uncased's own files use
    /// them; transformers renames them on load). In a RoBERTa or ELECTRA file
    /// ([`WeightsFile::read_as`]) under that family's names ([`EncoderFamily::hf_name`]), its
    /// prefix (`roberta.`, `electra.`) optional.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        let translated = self.family.hf_name(name);
        let name = translated.as_str();
        let prefix = format!("{}.", self.family.prefix());
        let legacy = LEGACY_LAYER_NORM_NAMES
            .into_iter()
            .find_map(|(modern, old)| Some(format!("{}{old}", name.strip_suffix(modern)?)));
        let unprefixed = |n: &str| n.strip_prefix(&prefix).map(str::to_string);
        let candidates = [
            Some(name.to_string()),
            unprefixed(name),
            legacy.clone(),
            legacy.as_deref().and_then(unprefixed),
        ];
        candidates
            .into_iter()
            .flatten()
            .find_map(|c| self.position(&c))
            .map(|i| self.names[i].as_str())
    }

    /// "tensor `name` is missing", and where the file holds it under a prefix spafit does
    /// not read (`model.`, `encoder.bert.`), that name too: the usual cause.
    pub fn missing(&self, name: &str) -> String {
        let translated = self.family.hf_name(name);
        let name = translated.as_str();
        let canonical = canonical_name(name);
        // The same tensor under another family's prefix (an ERNIE's saved as `bert.…`):
        // the config's model type and the file disagree.
        let under_other_prefix = self.names.iter().find(|n| {
            canonical_name(n) == canonical
                && EncoderFamily::ALL.iter().any(|f| {
                    f.prefix() != self.family.prefix() && n.starts_with(&format!("{}.", f.prefix()))
                })
        });
        if let Some(other) = under_other_prefix {
            return format!(
                "tensor `{name}` is missing; the file has `{other}`, under another family's \
                 prefix: config.json's `model_type` makes this a {} checkpoint, whose names \
                 start with `{}.` or with none",
                self.family.display(),
                self.family.prefix()
            );
        }
        let suffix = format!(".{canonical}");
        match self
            .names
            .iter()
            .find(|n| canonical_name(n).ends_with(&suffix))
        {
            Some(other) => format!(
                "tensor `{name}` is missing; the file has `{other}`, under a prefix spafit does \
                 not read (it reads {}'s names with a `{}.` prefix or none)",
                self.family.display(),
                self.family.prefix()
            ),
            // Named as the file spells its other tensors: without `bert.` in a `BertModel`
            // checkpoint.
            None => {
                let prefix = format!("{}.", self.family.prefix());
                // `encoder.` (DistilBERT's `transformer.`) without the prefix.
                let encoder = format!("{}.", self.family.hf_name_in_base_model("bert.encoder"));
                let unprefixed = name.strip_prefix(&prefix).filter(|_| {
                    !self.names.iter().any(|n| n.starts_with(&prefix))
                        && self.names.iter().any(|n| n.starts_with(&encoder))
                });
                format!("tensor `{}` is missing", unprefixed.unwrap_or(name))
            }
        }
    }

    /// The stored tensor `stored` and the shard holding it.
    fn stored(&self, stored: &str) -> Option<(&Shard, StoredTensor<'_>)> {
        let shard = &self.shards[self.shard_of[self.position(stored)?]];
        Some((shard, shard.tensor(stored)?))
    }

    /// The stored shape of tensor `name` (resolved as [`WeightsFile::resolve`] does).
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let stored = self.resolve(name)?;
        self.stored(stored).map(|(_, view)| view.shape.to_vec())
    }

    /// Tensor `name` as f64 values, checked against `shape`.
    pub fn read_f64(&self, name: &str, shape: &Shape) -> Result<Vec<f64>> {
        let stored = self.resolve(name).ok_or_else(|| Error::Format {
            path: self.path.clone(),
            detail: self.missing(name),
        })?;
        let (shard, view) = self.stored(stored).ok_or_else(|| Error::Format {
            path: self.path.clone(),
            detail: format!("tensor `{stored}` cannot be read"),
        })?;
        let format = |detail: String| Error::Format {
            path: shard.path.clone(),
            detail,
        };
        if view.shape != shape.dims() {
            return Err(format(format!(
                "tensor `{stored}` has shape {:?}, expected {shape}",
                view.shape
            )));
        }
        let data = shard
            .data_of(&view)
            .map_err(|e| format(format!("tensor `{stored}` cannot be read: {e}")))?;
        use crate::tensor::collect_host;
        let what = || format!("reading tensor `{stored}` {shape} as f64");
        let values: Vec<f64> = match view.dtype {
            Dtype::F32 => collect_host(
                data.chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                "checkpoint",
                what,
            )?,
            Dtype::F64 => collect_host(
                data.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk"))),
                "checkpoint",
                what,
            )?,
            Dtype::F16 => collect_host(
                data.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()),
                "checkpoint",
                what,
            )?,
            Dtype::BF16 => collect_host(
                data.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()),
                "checkpoint",
                what,
            )?,
            other => {
                return Err(format(format!(
                    "tensor `{stored}` has dtype {other:?}; expected F32, F16, BF16 or F64"
                )))
            }
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format(format!(
                "tensor `{stored}` holds {} at flat index {i}: {NON_FINITE_WEIGHTS}",
                values[i]
            )));
        }
        Ok(values)
    }

    /// Tensor `name` on `backend`, checked against `shape` and the backend's float range.
    pub fn tensor<B: Backend>(&self, backend: &B, name: &str, shape: Shape) -> Result<Tensor<B>> {
        let values = self.read_f64(name, &shape)?;
        // An F64 checkpoint's value past f32's range would become an infinity, and every
        // output NaN, without a word of where it came from.
        let dtype = backend.float_dtype();
        if let Some(i) = values.iter().position(|&v| !dtype.holds_finite(v)) {
            // `read_f64` found the tensor: it resolves.
            let stored = self.resolve(name).unwrap_or(name);
            let path = self
                .stored(stored)
                .map_or_else(|| self.path.clone(), |(shard, _)| shard.path.clone());
            return Err(Error::Format {
                path,
                detail: format!(
                    "tensor `{}` holds {:e} at flat index {i}, beyond the range of {dtype} \
                     that {} computes in (a model with infinite weights gives no usable \
                     outputs): --dtype f64 on the CPU holds it",
                    stored,
                    values[i],
                    backend.name()
                ),
            });
        }
        backend.tensor_from_f64(shape, &values)
    }
}

/// LayerNorm parameters as transformers names them, and as TensorFlow-era checkpoints
/// (bert-base-uncased's own files) store them; read both ways by [`WeightsFile::resolve`]
/// and [`canonical_name`].
const LEGACY_LAYER_NORM_NAMES: [(&str, &str); 2] = [
    ("LayerNorm.weight", "LayerNorm.gamma"),
    ("LayerNorm.bias", "LayerNorm.beta"),
];

/// `name` as transformers names it inside `BertModel` (or `RobertaModel`, `ElectraModel`,
/// ...): without the `bert.` (`roberta.`, `electra.`, ...) prefix, and LayerNorm parameters as
/// `weight` / `bias` rather than
/// TensorFlow's `gamma` / `beta`.
fn canonical_name(name: &str) -> String {
    let name = EncoderFamily::ALL
        .iter()
        .find_map(|f| name.strip_prefix(f.prefix())?.strip_prefix('.'))
        .unwrap_or(name);
    for (modern, old) in LEGACY_LAYER_NORM_NAMES {
        if let Some(stem) = name.strip_suffix(old) {
            return format!("{stem}{modern}");
        }
    }
    name.to_string()
}

/// The first tensor whose header entry does not fit the file, named, for a file the
/// safetensors crate refused (its own message names no tensor when a size is wrong, and
/// names a neighbour when an offset is out of range).
fn misfit_tensor(bytes: &[u8]) -> Option<String> {
    let header_len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header_bytes = bytes.get(8..8usize.checked_add(header_len)?)?;
    // A JSON map keeps one of two entries of the same name: the other's bytes look missing.
    let names = serde_json::from_slice::<HeaderNames>(header_bytes).ok()?.0;
    if let Some(twice) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        return Some(format!("the header lists tensor `{twice}` twice"));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header_bytes).ok()?;
    let data_len = bytes.len() - 8 - header_len;
    let mut entries: Vec<(&String, usize, usize)> = Vec::new();
    for (name, info) in header.iter().filter(|(n, _)| *n != "__metadata__") {
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        let offsets = offsets.and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)));
        let Some((start, end)) = offsets.map(|(s, e)| (s as usize, e as usize)) else {
            return Some(format!(
                "tensor `{name}`: `data_offsets` {} is not a pair of byte offsets",
                info.get("data_offsets").unwrap_or(&serde_json::Value::Null)
            ));
        };
        let dtype = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let element = match dtype {
            "F64" | "I64" | "U64" => Some(8),
            "F32" | "I32" | "U32" => Some(4),
            "F16" | "BF16" | "I16" | "U16" => Some(2),
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => Some(1),
            _ => None,
        };
        let Some(element) = element else {
            return Some(format!(
                "tensor `{name}`: unknown dtype {}",
                info.get("dtype").unwrap_or(&serde_json::Value::Null)
            ));
        };
        let dims: Option<Vec<usize>> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
        let Some(dims) = dims else {
            return Some(format!(
                "tensor `{name}`: shape {} is not a list of sizes",
                info.get("shape").unwrap_or(&serde_json::Value::Null)
            ));
        };
        let Some(size) = dims
            .iter()
            .try_fold(element, |n: usize, &d| n.checked_mul(d))
        else {
            return Some(format!(
                "tensor `{name}`: shape {dims:?} is too large to address"
            ));
        };
        if end < start || end > data_len {
            return Some(format!(
                "tensor `{name}`: byte range {start}..{end} lies outside the {data_len} data bytes"
            ));
        }
        if size != end - start {
            return Some(format!(
                "tensor `{name}`: its dtype and shape need {size} bytes but its byte range \
                 {start}..{end} holds {}",
                end - start
            ));
        }
        entries.push((name, start, end));
    }
    // By start, then end: an empty tensor at another's start overlaps nothing.
    entries.sort_by_key(|e| (e.1, e.2));
    let overlap = entries.windows(2).find(|w| w[1].1 < w[0].2).map(|w| {
        format!(
            "tensors `{}` and `{}` overlap in the data (byte ranges {}..{} and {}..{})",
            w[0].0, w[1].0, w[0].1, w[0].2, w[1].1, w[1].2
        )
    });
    // The format packs the tensors end to end: bytes no entry claims are a tensor the
    // header left out (or a file cut and patched).
    let unclaimed = |from: usize, to: usize, place: String| {
        format!(
            "data bytes {from}..{to} ({place}) belong to no tensor in the header: an entry \
             is missing, or its byte range is wrong"
        )
    };
    let gap = || {
        let first = entries.first()?;
        if first.1 > 0 {
            return Some(unclaimed(0, first.1, format!("before `{}`", first.0)));
        }
        if let Some(w) = entries.windows(2).find(|w| w[1].1 > w[0].2) {
            let place = format!("between `{}` and `{}`", w[0].0, w[1].0);
            return Some(unclaimed(w[0].2, w[1].1, place));
        }
        let last = entries.last()?;
        (last.2 < data_len).then(|| unclaimed(last.2, data_len, format!("after `{}`", last.0)))
    };
    overlap.or_else(gap)
}

/// A safetensors header's entry names in the file's order, each as often as it appears.
struct HeaderNames(Vec<String>);

impl<'de> serde::Deserialize<'de> for HeaderNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = HeaderNames;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<HeaderNames, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    names.push(name);
                }
                Ok(HeaderNames(names))
            }
        }
        d.deserialize_map(Names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY_ROBERTA: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-roberta/model/model.safetensors"
    );

    /// Given back, the file's bytes leave memory; the names, shapes and identities stay as
    /// they were, and a tensor read afterwards is an error that says why.
    #[test]
    fn the_bytes_given_back_leave_shapes_and_identities() {
        let path = Path::new(TINY_ROBERTA);
        let size = std::fs::metadata(path).unwrap().len() as isize;
        let bytes = std::fs::read(path).unwrap();
        let fresh = WeightsFile::from_bytes(path, bytes.clone())
            .unwrap()
            .read_as(EncoderFamily::Roberta);
        let mut file = WeightsFile::from_bytes(path, bytes)
            .unwrap()
            .read_as(EncoderFamily::Roberta);
        let name = "bert.embeddings.word_embeddings.weight";
        let shape = file.shape(name).unwrap();
        assert!(file.read_f64(name, &Shape::new(shape.clone())).is_ok());
        let held = crate::allocation_peak::held_bytes();
        file.release_tensor_data().unwrap();
        let freed = held - crate::allocation_peak::held_bytes();
        // Less the identities' few hundred bytes, made first.
        assert!(
            freed >= size - 4096,
            "{freed} bytes given back of a {size}-byte file"
        );
        assert_eq!(file.shape(name), Some(shape.clone()));
        assert_eq!(file.names(), fresh.names());
        assert_eq!(file.sha256().unwrap(), fresh.sha256().unwrap());
        assert_eq!(
            file.encoder_sha256().unwrap(),
            fresh.encoder_sha256().unwrap()
        );
        assert_eq!(
            file.encoder_fingerprint().unwrap(),
            fresh.encoder_fingerprint().unwrap()
        );
        let e = file.read_f64(name, &Shape::new(shape)).unwrap_err();
        assert!(e.to_string().contains("bytes were given back"), "{e}");
    }

    /// A file opened from disk holds no more than its header in memory, reads each tensor
    /// as the same values, and has the same identities, as the file read whole.
    #[test]
    fn a_file_on_disk_is_read_a_tensor_at_a_time_as_the_whole_file_is() {
        let path = Path::new(TINY_ROBERTA);
        let size = std::fs::metadata(path).unwrap().len() as isize;
        let whole = WeightsFile::from_bytes(path, std::fs::read(path).unwrap())
            .unwrap()
            .read_as(EncoderFamily::Roberta);
        let before = crate::allocation_peak::held_bytes();
        let on_disk = WeightsFile::open(path)
            .unwrap()
            .read_as(EncoderFamily::Roberta);
        let held = crate::allocation_peak::held_bytes() - before;
        assert!(held < size / 4, "{held} bytes held for a {size}-byte file");
        assert!(matches!(on_disk.shards[0].data, ShardData::OnDisk(_)));
        assert_eq!(on_disk.names(), whole.names());
        let bytes_of = |file: &WeightsFile, name: &str| {
            let shard = &file.shards[0];
            shard
                .data_of(&shard.tensor(name).unwrap())
                .unwrap()
                .into_owned()
        };
        for name in whole.names() {
            assert_eq!(bytes_of(&on_disk, name), bytes_of(&whole, name), "{name}");
        }
        let shape = Shape::new(
            on_disk
                .shape("bert.embeddings.word_embeddings.weight")
                .unwrap(),
        );
        assert_eq!(
            on_disk
                .read_f64("bert.embeddings.word_embeddings.weight", &shape)
                .unwrap(),
            whole
                .read_f64("bert.embeddings.word_embeddings.weight", &shape)
                .unwrap()
        );
        let file_sha = crate::adapter::sha256_hex(&std::fs::read(path).unwrap());
        assert_eq!(on_disk.sha256().unwrap(), whole.sha256().unwrap());
        assert_eq!(on_disk.sha256().unwrap(), file_sha);
        assert_eq!(
            on_disk.encoder_sha256().unwrap(),
            whole.encoder_sha256().unwrap()
        );
        assert_eq!(
            on_disk.encoder_fingerprint().unwrap(),
            whole.encoder_fingerprint().unwrap()
        );
    }

    /// A file that cannot be read when it is hashed (cut short after it was opened) has no
    /// identity: asking for one is an error naming the file and saying why, each time it is
    /// asked, never a hash of the error that an adapter would record as its base; giving
    /// its bytes back is refused with the same error.
    #[test]
    fn a_file_unreadable_while_hashed_has_no_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::copy(TINY_ROBERTA, &path).unwrap();
        let mut file = WeightsFile::open(&path)
            .unwrap()
            .read_as(EncoderFamily::Roberta);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let says = |e: Error| {
            let text = e.to_string();
            assert!(matches!(e, Error::Io { .. }), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(
                text.contains("could not be read to make its identity"),
                "{text}"
            );
        };
        says(file.sha256().unwrap_err());
        says(file.sha256().unwrap_err());
        says(file.encoder_sha256().unwrap_err());
        says(file.release_tensor_data().unwrap_err());
        assert!(matches!(file.shards[0].data, ShardData::OnDisk(_)));
    }

    /// A file written over in place, at its length, after it was opened (another writer
    /// copying onto it) is noticed at the next read: a tensor or the identity read then is
    /// an error saying so, never a mix of the two files.
    #[test]
    fn a_file_written_over_after_it_was_opened_is_read_no_further() {
        use std::io::{Seek, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::copy(TINY_ROBERTA, &path).unwrap();
        // Set well back: a write in the same clock tick as the copy would keep its time.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(old).unwrap();
        let file = WeightsFile::open(&path)
            .unwrap()
            .read_as(EncoderFamily::Roberta);
        let name = "bert.embeddings.word_embeddings.weight";
        let shape = Shape::new(file.shape(name).unwrap());
        assert!(file.read_f64(name, &shape).is_ok());
        let len = std::fs::metadata(&path).unwrap().len();
        let mut f = f;
        f.seek(std::io::SeekFrom::Start(len - 4)).unwrap();
        f.write_all(&[0, 0, 0, 0]).unwrap();
        f.sync_all().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        let e = file.read_f64(name, &shape).unwrap_err().to_string();
        assert!(e.contains("changed on disk after it was opened"), "{e}");
        let e = file.sha256().unwrap_err().to_string();
        assert!(e.contains("changed on disk after it was opened"), "{e}");
    }
}
