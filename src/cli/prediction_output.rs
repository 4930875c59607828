//! `spafit predict`'s output: JSON lines, CSV, TSV, or GLUE's submission TSV.

use clap::ValueEnum;
use spafit::data::GlueTask;
use spafit::train::Prediction;
use spafit::{Error, Result};

/// How `spafit predict` writes its predictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PredictionFormat {
    /// One JSON object per example.
    Jsonl,
    /// A header row, then one row per example.
    Csv,
    /// As CSV with tabs; for a GLUE task, GLUE's submission file (`index`, `prediction`).
    Tsv,
}

impl PredictionFormat {
    /// The format `--format` names, else the one the output file's extension names, else
    /// JSON lines.
    pub fn choose(given: Option<Self>, output: Option<&std::path::Path>) -> Self {
        let by_extension = output
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .and_then(|e| match e.to_ascii_lowercase().as_str() {
                "csv" => Some(PredictionFormat::Csv),
                "tsv" => Some(PredictionFormat::Tsv),
                "jsonl" | "json" => Some(PredictionFormat::Jsonl),
                _ => None,
            });
        given.or(by_extension).unwrap_or(PredictionFormat::Jsonl)
    }
}

/// The predictions of a split, with what names them.
pub struct PredictionTable<'a> {
    pub predictions: &'a [Prediction],
    /// Class names in id order (classification).
    pub labels: Option<&'a [String]>,
    /// Whether each prediction is a set of classes (multi-label).
    pub multi_label: bool,
    /// The file line of each example (may be empty).
    pub source_lines: &'a [usize],
    /// The GLUE task, whose TSV is the submission format.
    pub glue: Option<GlueTask>,
    /// The submission's row ids (the test file's `index` column), one per prediction; by
    /// position when absent.
    pub submission_ids: Option<&'a [String]>,
}

impl PredictionTable<'_> {
    /// The whole output as text.
    pub fn render(&self, format: PredictionFormat) -> Result<String> {
        match format {
            PredictionFormat::Jsonl => Ok(self.jsonl()),
            PredictionFormat::Tsv if self.glue.is_some() => Ok(self.glue_submission()),
            PredictionFormat::Csv => self.delimited(b','),
            PredictionFormat::Tsv => self.delimited(b'\t'),
        }
    }

    fn label(&self, class: usize) -> String {
        self.labels
            .and_then(|l| l.get(class))
            .cloned()
            .unwrap_or_else(|| class.to_string())
    }

    /// The names of a predicted set of classes, comma-separated (as spafit reads a
    /// multi-label field back).
    fn label_set(&self, classes: &[usize]) -> String {
        let names: Vec<String> = classes.iter().map(|&c| self.label(c)).collect();
        names.join(",")
    }

    fn line(&self, i: usize) -> Option<usize> {
        self.source_lines.get(i).copied()
    }

    /// The GLUE file's own id of example `i` (its `index` or `id` column), beside `index`,
    /// which counts the examples read: the two differ in general, and a submission keys on
    /// the id.
    fn glue_id(&self, i: usize) -> Option<&str> {
        self.submission_ids
            .filter(|ids| ids.len() == self.predictions.len())
            .and_then(|ids| ids.get(i))
            .map(String::as_str)
    }

    fn jsonl(&self) -> String {
        // Written by hand so that class probabilities keep the class order.
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let number = |v: f64| serde_json::Value::from(v).to_string();
        let mut out = String::new();
        for (i, p) in self.predictions.iter().enumerate() {
            out.push_str(&format!("{{\"index\":{i}"));
            if let Some(id) = self.glue_id(i) {
                out.push_str(&format!(",\"id\":{}", quote(id)));
            }
            if let Some(line) = self.line(i) {
                out.push_str(&format!(",\"line\":{line}"));
            }
            // Every class's probability, keyed by its name in class order.
            let by_class = |probabilities: &[f64]| {
                let all: Vec<String> = probabilities
                    .iter()
                    .enumerate()
                    .map(|(c, v)| format!("{}:{}", quote(&self.label(c)), number(*v)))
                    .collect();
                all.join(",")
            };
            match p {
                Prediction::Class {
                    class,
                    probability,
                    probabilities,
                } => {
                    out.push_str(&format!(
                        ",\"label\":{},\"probability\":{},\"probabilities\":{{{}}}}}\n",
                        quote(&self.label(*class)),
                        number(*probability),
                        by_class(probabilities)
                    ));
                }
                Prediction::LabelSet {
                    classes,
                    probabilities,
                } => {
                    let names: Vec<String> =
                        classes.iter().map(|&c| quote(&self.label(c))).collect();
                    out.push_str(&format!(
                        ",\"labels\":[{}],\"probabilities\":{{{}}}}}\n",
                        names.join(","),
                        by_class(probabilities)
                    ));
                }
                Prediction::Score(s) => out.push_str(&format!(",\"score\":{}}}\n", number(*s))),
            }
        }
        out
    }

    fn glue_submission(&self) -> String {
        let mut out = String::from("index\tprediction\n");
        for (i, p) in self.predictions.iter().enumerate() {
            let value = match p {
                Prediction::Class { class, .. } => self.label(*class),
                Prediction::LabelSet { classes, .. } => self.label_set(classes),
                Prediction::Score(s) => s.to_string(),
            };
            let id = self
                .submission_ids
                .and_then(|ids| ids.get(i))
                .map_or_else(|| i.to_string(), String::clone);
            out.push_str(&format!("{id}\t{value}\n"));
        }
        out
    }

    fn delimited(&self, delimiter: u8) -> Result<String> {
        // TSV fields go unquoted, as GLUE's files are and as spafit's TSV reader reads
        // them: class names hold no tab or line break (refused where they are read).
        let quoting = match delimiter {
            b'\t' => csv::QuoteStyle::Never,
            _ => csv::QuoteStyle::Necessary,
        };
        let mut w = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .quote_style(quoting)
            .from_writer(Vec::new());
        // The header follows the task, not the first row: an empty split still gets the
        // columns its rows would have.
        let classes = self.labels.map_or(0, <[String]>::len);
        let has_lines = self.source_lines.len() == self.predictions.len();
        let has_ids = self
            .submission_ids
            .is_some_and(|ids| ids.len() == self.predictions.len());
        let mut header = vec!["index".to_string()];
        if has_ids {
            header.push("id".into());
        }
        if has_lines {
            header.push("line".into());
        }
        if classes > 0 {
            match self.multi_label {
                true => header.push("labels".into()),
                false => header.extend(["label".to_string(), "probability".to_string()]),
            }
            header.extend((0..classes).map(|c| format!("probability_{}", self.label(c))));
        } else {
            header.push("score".into());
        }
        let io = |e: csv::Error| Error::invalid("predict", e.to_string());
        w.write_record(&header).map_err(io)?;
        for (i, p) in self.predictions.iter().enumerate() {
            let mut row = vec![i.to_string()];
            if has_ids {
                row.push(self.glue_id(i).unwrap_or_default().to_string());
            }
            if has_lines {
                row.push(self.line(i).map_or(String::new(), |l| l.to_string()));
            }
            match p {
                Prediction::Class {
                    class,
                    probability,
                    probabilities,
                } => {
                    row.extend([self.label(*class), probability.to_string()]);
                    row.extend(probabilities.iter().map(f64::to_string));
                }
                Prediction::LabelSet {
                    classes,
                    probabilities,
                } => {
                    row.push(self.label_set(classes));
                    row.extend(probabilities.iter().map(f64::to_string));
                }
                Prediction::Score(s) => row.push(s.to_string()),
            }
            w.write_record(&row).map_err(io)?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| Error::invalid("predict", e.to_string()))?;
        String::from_utf8(bytes).map_err(|e| Error::invalid("predict", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_and_quoted_labels() {
        let scores = [Prediction::Score(2.5), Prediction::Score(-0.125)];
        let table = PredictionTable {
            predictions: &scores,
            labels: None,
            multi_label: false,
            source_lines: &[],
            glue: None,
            submission_ids: None,
        };
        assert_eq!(
            table.render(PredictionFormat::Jsonl).unwrap(),
            "{\"index\":0,\"score\":2.5}\n{\"index\":1,\"score\":-0.125}\n"
        );
        assert_eq!(
            table.render(PredictionFormat::Csv).unwrap(),
            "index,score\n0,2.5\n1,-0.125\n"
        );
        let glue = PredictionTable {
            glue: Some(GlueTask::Stsb),
            submission_ids: None,
            ..table
        };
        assert_eq!(
            glue.render(PredictionFormat::Tsv).unwrap(),
            "index\tprediction\n0\t2.5\n1\t-0.125\n"
        );
        // The GLUE file's own ids key the submission, and stand beside the position in the
        // other formats, under their own name.
        let ids = ["100".to_string(), "107".to_string()];
        let keyed = PredictionTable {
            submission_ids: Some(&ids),
            ..glue
        };
        assert_eq!(
            keyed.render(PredictionFormat::Tsv).unwrap(),
            "index\tprediction\n100\t2.5\n107\t-0.125\n"
        );
        assert_eq!(
            keyed.render(PredictionFormat::Csv).unwrap(),
            "index,id,score\n0,100,2.5\n1,107,-0.125\n"
        );
        assert_eq!(
            keyed.render(PredictionFormat::Jsonl).unwrap(),
            "{\"index\":0,\"id\":\"100\",\"score\":2.5}\n{\"index\":1,\"id\":\"107\",\"score\":-0.125}\n"
        );

        let labels = ["no, never".to_string(), "yes \"sure\"".to_string()];
        let classes = [Prediction::Class {
            class: 1,
            probability: 0.75,
            probabilities: vec![0.25, 0.75],
        }];
        let table = PredictionTable {
            predictions: &classes,
            labels: Some(&labels),
            multi_label: false,
            source_lines: &[7],
            glue: None,
            submission_ids: None,
        };
        assert_eq!(
            table.render(PredictionFormat::Csv).unwrap(),
            "index,line,label,probability,\"probability_no, never\",\"probability_yes \"\"sure\"\"\"\n\
             0,7,\"yes \"\"sure\"\"\",0.75,0.25,0.75\n"
        );
        assert_eq!(
            table.render(PredictionFormat::Jsonl).unwrap(),
            "{\"index\":0,\"line\":7,\"label\":\"yes \\\"sure\\\"\",\"probability\":0.75,\
             \"probabilities\":{\"no, never\":0.25,\"yes \\\"sure\\\"\":0.75}}\n"
        );
        // An empty split keeps its task's columns.
        let empty = PredictionTable {
            predictions: &[],
            source_lines: &[],
            ..table
        };
        assert_eq!(
            empty.render(PredictionFormat::Tsv).unwrap(),
            "index\tline\tlabel\tprobability\tprobability_no, never\tprobability_yes \"sure\"\n"
        );
        assert_eq!(
            PredictionFormat::choose(None, Some(std::path::Path::new("p.TSV"))),
            PredictionFormat::Tsv
        );
        assert_eq!(
            PredictionFormat::choose(
                Some(PredictionFormat::Csv),
                Some(std::path::Path::new("p.tsv"))
            ),
            PredictionFormat::Csv
        );
    }
}
