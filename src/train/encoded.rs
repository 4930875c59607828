use crate::backend::Backend;
use crate::checkpoint::BertConfig;
use crate::data::{Dataset, Target, TaskKind};
use crate::error::{Error, Result};
use crate::model::{Labels, ModelInput};
use crate::tensor::Shape;
use crate::text::{EncodedBatch, EncodedText, TextTokenizer};

/// A dataset tokenized once, ready to be cut into padded batches.
pub struct EncodedDataset {
    /// Per example.
    pub texts: Vec<EncodedText>,
    /// Per example, `None` for unlabeled data.
    pub targets: Vec<Option<Target>>,
    /// Label space.
    pub kind: TaskKind,
    pad_id: u32,
    /// The file line of each example, in step with `texts`; empty for data built in code.
    source_lines: Vec<usize>,
}

/// A summary: the size and label space, not every example's token ids.
impl std::fmt::Debug for EncodedDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedDataset")
            .field("examples", &self.texts.len())
            .field(
                "labeled",
                &self.targets.iter().filter(|t| t.is_some()).count(),
            )
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl EncodedDataset {
    /// Tokenizes every example of `data`.
    pub fn new(tokenizer: &TextTokenizer, data: &Dataset) -> Result<Self> {
        // Lines out of step with the examples (a dataset built by hand) would name wrong
        // ones: none rather than those.
        let source_lines = match data.source_lines.len() == data.examples.len() {
            true => data.source_lines.clone(),
            false => Vec::new(),
        };
        let line = |i: usize| match source_lines.get(i) {
            Some(line) => format!("line {line}"),
            None => format!("example {i}"),
        };
        let texts = data
            .examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                // A text the tokenizer could not take is named by its place in the data.
                tokenizer.encode(e.input()).map_err(|error| match error {
                    Error::Format { .. } => Error::Format {
                        path: data.name.clone().into(),
                        detail: format!("{}: {error}", line(i)),
                    },
                    Error::OutOfMemory { op, detail } => Error::OutOfMemory {
                        op,
                        detail: format!("{}, {}: {detail}", data.name, line(i)),
                    },
                    other => other,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EncodedDataset {
            texts,
            targets: data.examples.iter().map(|e| e.target.clone()).collect(),
            kind: data.kind.clone(),
            pad_id: tokenizer.pad_id(),
            source_lines,
        })
    }

    /// The file line (1-based) example `i` was read from; `None` for data built in code.
    pub fn source_line(&self, i: usize) -> Option<usize> {
        self.source_lines.get(i).copied()
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Token count of each example.
    pub fn lengths(&self) -> Vec<usize> {
        self.texts.iter().map(|t| t.ids.len()).collect()
    }

    /// Examples `rows`, padded to the longest.
    pub fn batch(&self, rows: &[usize]) -> Result<EncodedBatch> {
        let picked = rows
            .iter()
            .map(|&i| self.text(i))
            .collect::<Result<Vec<&EncodedText>>>()?;
        EncodedBatch::pad(&picked, self.pad_id)
    }

    /// The tokens of example `i`.
    pub fn text(&self, i: usize) -> Result<&EncodedText> {
        self.texts.get(i).ok_or_else(|| self.no_row(i))
    }

    /// The target of example `i` (`None` when unlabeled).
    pub fn target(&self, i: usize) -> Result<Option<&Target>> {
        self.targets
            .get(i)
            .map(Option::as_ref)
            .ok_or_else(|| self.no_row(i))
    }

    fn no_row(&self, i: usize) -> Error {
        Error::invalid(
            "batch",
            format!(
                "example {i} is out of range: the dataset has {}",
                self.texts.len().min(self.targets.len())
            ),
        )
    }

    /// Model input (positions as `config`'s family numbers them) and labels of examples
    /// `rows`.
    pub fn tensors<B: Backend>(
        &self,
        backend: &B,
        rows: &[usize],
        config: &BertConfig,
    ) -> Result<(ModelInput<B>, Option<Labels<B>>, usize)> {
        let enc = self.batch(rows)?;
        let tokens = enc.attention_mask.iter().filter(|&&m| m == 1).count();
        // A refused id's example is named by its place in the data, which a batch's row is
        // not once batches shuffle.
        let example = |row: usize| match rows.get(row).map(|&i| (i, self.source_line(i))) {
            Some((_, Some(line))) => format!("line {line}"),
            Some((i, None)) => format!("example {i}"),
            None => format!("row {row} of the batch"),
        };
        let input = ModelInput::for_model_naming_rows(backend, &enc, config, &example)?;
        let targets: Option<Vec<&Target>> = rows
            .iter()
            .map(|&i| self.target(i))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .collect();
        let labels = match targets {
            None => None,
            Some(t) => Some(labels(backend, &self.kind, &t)?),
        };
        Ok((input, labels, tokens))
    }
}

fn labels<B: Backend>(backend: &B, kind: &TaskKind, targets: &[&Target]) -> Result<Labels<B>> {
    let shape = Shape::new([targets.len()]);
    let mismatch = || {
        Error::invalid(
            "labels",
            "targets do not match the task kind (class ids, sets of classes or scores)",
        )
    };
    match kind {
        TaskKind::Classification { .. } => {
            let ids = targets
                .iter()
                .map(|t| match t {
                    Target::Class(c) => Ok(*c),
                    _ => Err(mismatch()),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Labels::Classes(backend.tensor_from_u32(shape, &ids)?))
        }
        TaskKind::MultiLabel { .. } => {
            let classes = kind.num_labels();
            if classes == 0 {
                return Err(Error::invalid("labels", "a multi-label task of no classes"));
            }
            let mut multi_hot = vec![0.0; targets.len() * classes];
            for (row, t) in multi_hot.chunks_exact_mut(classes).zip(targets) {
                let Target::LabelSet(ids) = t else {
                    return Err(mismatch());
                };
                for &c in ids {
                    *row.get_mut(c as usize).ok_or_else(|| {
                        Error::invalid(
                            "labels",
                            format!("class id {c} is not below the {classes} classes"),
                        )
                    })? = 1.0;
                }
            }
            let shape = Shape::new([targets.len(), classes]);
            Ok(Labels::MultiHot(
                backend.tensor_from_f64(shape, &multi_hot)?,
            ))
        }
        TaskKind::Regression => {
            let scores = targets
                .iter()
                .map(|t| match t {
                    Target::Score(s) => Ok(*s),
                    _ => Err(mismatch()),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Labels::Scores(backend.tensor_from_f64(shape, &scores)?))
        }
    }
}
