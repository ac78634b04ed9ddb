//! Ingesting files and folders (`switchboard knowledge ingest`, the demo content at first start).

use std::path::{Path, PathBuf};

use super::extract::Format;
use super::{Ingested, Knowledge, KnowledgeError, Upload};

/// Files under `paths` (folders walked recursively, in name order) that look like documents.
pub fn collect(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    !p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            entries.sort();
            out.extend(collect(&entries)?);
        } else if path.is_file() {
            out.push(path.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            ));
        }
    }
    Ok(out)
}

/// Why one file was not ingested.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("unsupported format (documents are .md, .txt, .html or .pdf)")]
    Unsupported,
    #[error("not UTF-8 text")]
    NotText,
    #[error("{0}")]
    Pdf(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Knowledge(#[from] KnowledgeError),
}

/// Reads a file as an upload. Its canonical path identifies it for later replacement, however
/// it was typed (`kb`, `/abs/kb`, `./kb/../kb`, from another working directory).
async fn read_upload(knowledge: &Knowledge, path: &Path) -> Result<Upload, FileError> {
    let canonical = tokio::fs::canonicalize(path).await?;
    let name = canonical.to_string_lossy().into_owned();
    let format = Format::from_path(&name).ok_or(FileError::Unsupported)?;
    let bytes = tokio::fs::read(path).await?;
    let content = if format == Format::Pdf {
        knowledge.pdf_text(bytes).await.map_err(FileError::Pdf)?
    } else {
        String::from_utf8(bytes).map_err(|_| FileError::NotText)?
    };
    Ok(Upload {
        title: None,
        content,
        format,
        source: Some(name),
    })
}

/// Ingests files for a tenant, one SQL transaction and one vector write for the whole batch
/// (call it with batches of a few dozen files). One outcome per file, in order.
pub async fn ingest_files(
    knowledge: &Knowledge,
    tenant_id: &str,
    paths: &[std::path::PathBuf],
) -> Vec<Result<Ingested, FileError>> {
    let mut out: Vec<Option<Result<Ingested, FileError>>> = Vec::with_capacity(paths.len());
    let mut uploads = Vec::new();
    let mut slots = Vec::new();
    for path in paths {
        match read_upload(knowledge, path).await {
            Ok(upload) => {
                slots.push(out.len());
                uploads.push(upload);
                out.push(None);
            }
            Err(e) => out.push(Some(Err(e))),
        }
    }
    match knowledge.ingest_many(tenant_id, uploads).await {
        Ok(results) => {
            for (slot, result) in slots.into_iter().zip(results) {
                out[slot] = Some(result.map_err(FileError::from));
            }
        }
        Err(e) => {
            let reason = e.to_string();
            for slot in slots {
                out[slot] = Some(Err(FileError::Knowledge(KnowledgeError::Index(
                    anyhow::anyhow!("{reason}"),
                ))));
            }
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or(Err(FileError::Unsupported)))
        .collect()
}

/// The demo tenant's coaching notes (`knowledge/` in the repository), built into the binary so
/// that the demo answers wherever the binary runs from.
pub const DEMO_KNOWLEDGE: [(&str, &str); 4] = [
    ("goals.md", include_str!("../../knowledge/goals.md")),
    ("habits.md", include_str!("../../knowledge/habits.md")),
    ("sleep.md", include_str!("../../knowledge/sleep.md")),
    ("stress.md", include_str!("../../knowledge/stress.md")),
];

/// Ingests the built-in demo notes for `tenant_id`; one outcome per note, in order.
pub async fn ingest_demo(
    knowledge: &Knowledge,
    tenant_id: &str,
) -> Result<Vec<Result<Ingested, KnowledgeError>>, KnowledgeError> {
    let uploads = DEMO_KNOWLEDGE
        .iter()
        .map(|(name, content)| Upload {
            title: None,
            content: (*content).to_owned(),
            format: Format::Markdown,
            source: Some(format!("builtin:knowledge/{name}")),
        })
        .collect();
    knowledge.ingest_many(tenant_id, uploads).await
}
