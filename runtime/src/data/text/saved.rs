//! What a model trained on text needs to read text again — the
//! vocabulary (with its tokenizer), the format, and the class or tag names
//! — and how it is kept in a weights file's metadata, so that `eval`,
//! `predict` and resumed runs use exactly the training run's ids.
//!
//! Metadata keys (string values, in the safetensors header):
//! `data.vocabulary` ([`Vocabulary::to_json`]), `data.format`
//! (`{"format":"language_model","stream":false,"bos":true}`;
//! classification adds `"pad":"start"` or `"end"`), and for
//! classification and tagging `data.labels` (a JSON array of names: class
//! or tag `i` is the `i`-th).

use netc_compiler::train::{Pad, TextFormat};
use serde::{Deserialize, Serialize};

use super::Vocabulary;
use crate::weights::Weights;

/// The metadata key of the vocabulary.
pub const VOCABULARY_KEY: &str = "data.vocabulary";
/// The metadata key of the format.
pub const FORMAT_KEY: &str = "data.format";
/// The metadata key of the class or tag names.
pub const LABELS_KEY: &str = "data.labels";

/// A text data set's vocabulary, format and label names.
#[derive(Clone, Debug, PartialEq)]
pub struct TextInfo {
    /// Token ids, with the tokenizer.
    pub vocabulary: Vocabulary,
    /// What a line of the file is.
    pub format: TextFormat,
    /// Class names (classification) or tag names (tagging): class `i` is
    /// `labels[i]`; `None` for language models (their classes are the
    /// vocabulary).
    pub labels: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct StoredFormat {
    format: String,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    bos: bool,
    /// Classification's padding side: `start` or `end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pad: Option<String>,
}

/// Why the text metadata of a weights file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}the text metadata `{key}` is invalid: {why}", source_of(.file))]
pub struct TextInfoError {
    file: Option<String>,
    key: &'static str,
    why: String,
}

fn source_of(f: &Option<String>) -> String {
    f.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

impl TextInfo {
    /// The metadata entries (key, value) that [`TextInfo::from_weights`]
    /// reads back.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let (stream, bos) = match self.format {
            TextFormat::LanguageModel { stream, bos } => (stream, bos),
            _ => (false, false),
        };
        let pad = match self.format {
            TextFormat::Classification { pad: Pad::Start } => Some("start".to_string()),
            TextFormat::Classification { pad: Pad::End } => Some("end".to_string()),
            _ => None,
        };
        let f = StoredFormat {
            format: self.format.name().to_string(),
            stream,
            bos,
            pad,
        };
        let mut m = vec![
            (VOCABULARY_KEY.to_string(), self.vocabulary.to_json()),
            // Strings and bools always serialize.
            (
                FORMAT_KEY.to_string(),
                serde_json::to_string(&f).unwrap_or_default(),
            ),
        ];
        if let Some(l) = &self.labels {
            m.push((
                LABELS_KEY.to_string(),
                serde_json::to_string(l).unwrap_or_default(),
            ));
        }
        m
    }

    /// Stores the entries of [`TextInfo::metadata`] in `w`'s metadata.
    pub fn attach(&self, w: &mut Weights) {
        for (k, v) in self.metadata() {
            w.set_metadata(k, v);
        }
    }

    /// The text info kept in `w`'s metadata; `None` when the weights were
    /// not trained on text (no `data.vocabulary`).
    pub fn from_weights(w: &Weights) -> Result<Option<TextInfo>, TextInfoError> {
        let file = w.source().map(|p| p.display().to_string());
        let err = |key, why: String| TextInfoError {
            file: file.clone(),
            key,
            why,
        };
        let Some(v) = w.metadata(VOCABULARY_KEY) else {
            return Ok(None);
        };
        let vocabulary =
            Vocabulary::from_json(v).map_err(|e| err(VOCABULARY_KEY, e.to_string()))?;
        let f: StoredFormat = w
            .metadata(FORMAT_KEY)
            .ok_or_else(|| err(FORMAT_KEY, "missing".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| err(FORMAT_KEY, e.to_string())))?;
        let format = match f.format.as_str() {
            "classification" => TextFormat::Classification {
                pad: match f.pad.as_deref() {
                    None | Some("start") => Pad::Start,
                    Some("end") => Pad::End,
                    Some(p) => return Err(err(FORMAT_KEY, format!("unknown padding `{p}`"))),
                },
            },
            "tagging" => TextFormat::Tagging,
            "pairs" => TextFormat::Pairs,
            "language_model" => TextFormat::LanguageModel {
                stream: f.stream,
                bos: f.bos,
            },
            other => return Err(err(FORMAT_KEY, format!("unknown format `{other}`"))),
        };
        let labels = match w.metadata(LABELS_KEY) {
            Some(s) => Some(
                serde_json::from_str::<Vec<String>>(s)
                    .map_err(|e| err(LABELS_KEY, e.to_string()))?,
            ),
            None => None,
        };
        if labels.is_none() && !format.targets_are_tokens() {
            return Err(err(
                LABELS_KEY,
                format!("missing; a {} model needs its label names", format.name()),
            ));
        }
        Ok(Some(TextInfo {
            vocabulary,
            format,
            labels,
        }))
    }
}
