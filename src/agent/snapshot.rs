//! `sitecache snapshot`: packs a directory and uploads it as generation N.
//!
//! tar → zstd → multipart upload, streamed: memory stays bounded (a few parts in flight) whatever
//! the tree's size, and the SHA-256 of the archive is computed on the way. The manifest, which
//! commits the generation, is written last and only if the archive is complete; on any failure
//! the multipart upload is aborted and nothing is committed.
//!
//! Each run is an *attempt* with a random token: it records itself
//! (`generations/<n>/attempts/<token>`) before uploading, and writes its archive under its own
//! key (`cache-<token>.tar.zst`), so two attempts of one generation (a Job's retry beside a pod
//! that is not dead yet) never overwrite each other's bytes; the manifest commits one of them.
//! What it committed goes to `--report-file` (the container's termination message), which is
//! what the controller promotes.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::StorageArgs;
use crate::archive::{
    self, FORMAT_TAR_ZSTD, FORMAT_VERSION, Manifest, PackError, PackStats, Report, Tree,
    UnpackLimits,
};
use crate::storage::{
    self, CaBundleError, Location, Part, StorageError, UploadError, UploadOptions,
};

/// Size of each uploaded part.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Pack a directory and upload it as a new generation.
#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// The directory to pack (the warmed DENO_DIR).
    #[arg(long, env = "SITECACHE_SOURCE", value_name = "DIR")]
    pub source: PathBuf,

    /// Where the site's generations live.
    #[arg(long, env = "SITECACHE_URL", value_name = "s3://BUCKET/PREFIX/")]
    pub url: Location,

    /// The generation number to write (the controller picks it; generations are immutable).
    #[arg(long, env = "SITECACHE_GENERATION", value_parser = clap::value_parser!(u64).range(1..))]
    pub generation: u64,

    /// zstd compression level, 1 (fastest) to 19 (smallest).
    #[arg(long, env = "SITECACHE_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,

    /// Refuse to snapshot fewer regular files than this (an unwarmed or partial cache).
    #[arg(long, env = "SITECACHE_MIN_FILES", default_value_t = 1)]
    pub min_files: u64,

    /// The source revision to record in the manifest.
    #[arg(long, env = "SITECACHE_SOURCE_REVISION")]
    pub source_revision: Option<String>,

    /// Also upload a gzip tarball with entries under deno-dir/ for older runners
    /// (generations/<n>/legacy.tar.gz; the controller publishes it on promotion).
    #[arg(long, env = "SITECACHE_LEGACY", value_parser = clap::builder::BoolishValueParser::new())]
    pub legacy: bool,

    /// Refuse a tree that unpacks to more than this (directories count 4 KiB each): the
    /// default is restore's, so that nothing is committed that runners would refuse. Keep it at
    /// or below the runners' `--max-unpacked-bytes`.
    #[arg(long, env = "SITECACHE_MAX_UNPACKED_BYTES", default_value = super::DEFAULT_MAX_UNPACKED_BYTES, value_parser = super::parse_size)]
    pub max_unpacked_bytes: u64,

    /// Never commit an archive larger than this (restore's default `--max-bytes`, which runners
    /// check before downloading anything): one that came out larger is uploaded but not
    /// committed. Keep it at or below the runners' `--max-bytes`.
    #[arg(long, env = "SITECACHE_MAX_BYTES", default_value = super::DEFAULT_MAX_BYTES, value_parser = super::parse_size)]
    pub max_bytes: u64,

    /// Refuse a tree with more entries than this (restore's default; keep it at or below the
    /// runners' `--max-entries`). Path length and depth and link length have restore's limits.
    #[arg(long, env = "SITECACHE_MAX_ENTRIES", default_value_t = UnpackLimits::DEFAULT.max_entries, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_entries: u64,

    /// Where to write what was committed (an [`archive::Report`], one line of JSON) or why
    /// nothing was: the Job points it at the container's termination message, which only this
    /// container can write and which the controller trusts over anything in the bucket.
    #[arg(long, env = "SITECACHE_REPORT_FILE", value_name = "FILE")]
    pub report_file: Option<PathBuf>,

    /// Parts uploading at once.
    #[arg(long, default_value_t = 4, hide = true)]
    pub upload_concurrency: usize,

    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Why a snapshot failed. Nothing was committed in any case.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("--source {0}: does not exist")]
    SourceMissing(PathBuf),
    #[error("--source {0}: not a directory")]
    SourceNotADirectory(PathBuf),
    #[error(
        "--source {0}: the directory is empty; refusing to snapshot a cache that was not warmed"
    )]
    SourceEmpty(PathBuf),
    #[error(
        "--source {path}: {files} regular files, fewer than --min-files {min}; refusing to snapshot a cache that is not warm"
    )]
    TooFewFiles { path: PathBuf, files: u64, min: u64 },
    #[error("packing --source: {0}")]
    Pack(#[from] PackError),
    #[error("generation {generation} already exists at {key}: generations are immutable")]
    GenerationExists { generation: u64, key: String },
    #[error("uploading the archive: {0}")]
    Upload(StorageError),
    #[error("the uploaded archive {key} is {found} bytes, expected {expected}")]
    SizeMismatch {
        key: String,
        found: u64,
        expected: u64,
    },
    #[error(
        "the archive {key} is {size} bytes, over --max-bytes {max}: not committed, since no runner with that limit would download it"
    )]
    TooLarge { key: String, size: u64, max: u64 },
    #[error("committing the manifest: {0}")]
    Manifest(StorageError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    CaBundle(#[from] CaBundleError),
    #[error("--report-file {path}: {source}")]
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl SnapshotError {
    /// A short machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            SnapshotError::SourceMissing(_)
            | SnapshotError::SourceNotADirectory(_)
            | SnapshotError::SourceEmpty(_)
            | SnapshotError::TooFewFiles { .. } => "source-refused",
            // A refused certificate says so whatever the call (no retry fixes it).
            SnapshotError::Upload(e) | SnapshotError::Manifest(e) | SnapshotError::Storage(e)
                if matches!(e, StorageError::Certificate { .. }) =>
            {
                e.kind()
            }
            SnapshotError::Pack(_) => "pack-failed",
            SnapshotError::GenerationExists { .. } => "generation-exists",
            SnapshotError::Upload(_) | SnapshotError::SizeMismatch { .. } => "upload-failed",
            SnapshotError::TooLarge { .. } => "too-large",
            SnapshotError::Manifest(_) => "commit-failed",
            SnapshotError::Storage(_) => "storage-error",
            SnapshotError::CaBundle(_) => "invalid-ca-bundle",
            SnapshotError::Report { .. } => "report-failed",
            SnapshotError::Internal(_) => "internal-error",
        }
    }
}

/// The result line of a successful snapshot.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotReport {
    pub ok: bool,
    pub generation: u64,
    pub key: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub files: u64,
    pub uncompressed_bytes: u64,
    pub ms: u64,
}

/// The most a termination message holds (kubelet reads no more).
const REPORT_LIMIT: usize = 4096;

/// Runs a snapshot and writes its report to `--report-file`.
pub async fn run(args: SnapshotArgs) -> Result<SnapshotReport, SnapshotError> {
    let report_file = args.report_file.clone();
    let result = commit(args).await;
    let Some(path) = report_file else {
        return result.map(|(summary, _)| summary);
    };
    let line = match &result {
        Ok((_, report)) => serde_json::to_string(report).expect("serializes"),
        Err(e) => serde_json::json!({"kind": e.kind(), "error": e.to_string()}).to_string(),
    };
    let mut line = line.into_bytes();
    line.truncate(REPORT_LIMIT);
    let written = tokio::fs::write(&path, line).await;
    match (result, written) {
        (Ok((summary, _)), Ok(())) => Ok(summary),
        (Ok(_), Err(source)) => Err(SnapshotError::Report { path, source }),
        (Err(e), _) => Err(e),
    }
}

/// Packs, uploads and commits; returns the result line and the report.
async fn commit(args: SnapshotArgs) -> Result<(SnapshotReport, Report), SnapshotError> {
    let start = Instant::now();
    // A bad --ca-bundle fails before the scan, which may take a while.
    let options = args.storage.options(None, 5)?;
    let limits = UnpackLimits {
        max_bytes: args.max_unpacked_bytes,
        max_entries: args.max_entries,
        ..UnpackLimits::DEFAULT
    };
    let tree = scan_source(&args.source, args.min_files, limits).await?;
    tracing::info!(
        source = %args.source.display(),
        files = tree.files,
        entries = tree.entries(),
        bytes = tree.uncompressed_bytes,
        skipped = tree.skipped_count,
        "scanned the cache directory"
    );
    for path in &tree.skipped {
        tracing::warn!(path = %path.display(), "left out: not a file, directory or link");
    }
    for path in &tree.mounts {
        tracing::warn!(
            path = %path.display(),
            "left out: another filesystem is mounted here, and what it holds is not the cache"
        );
    }
    let unnamed = tree.skipped_count - tree.skipped.len() as u64;
    if unnamed > 0 {
        tracing::warn!("left out {unnamed} more sockets, FIFOs or devices");
    }

    let client = storage::client(&options).await;
    let loc = &args.url;
    let manifest_key = loc.manifest_key(args.generation);
    if storage::head(&client, &loc.bucket, &manifest_key)
        .await?
        .is_some()
    {
        return Err(SnapshotError::GenerationExists {
            generation: args.generation,
            key: manifest_key,
        });
    }

    let token = storage::new_attempt_token();
    let attempt = loc.attempt_marker_key(args.generation, &token);
    let note = serde_json::json!({
        "startedAt": jiff::Timestamp::now(),
        "host": std::env::var("HOSTNAME").unwrap_or_default(),
    });
    storage::put_json(&client, &loc.bucket, &attempt, &note, true).await?;
    let owner = tree.owner();
    let result = upload_and_commit(&client, &args, tree, &token).await;
    if result.is_err() {
        // Nothing of this attempt is committed: its objects go (best effort; retention and the
        // SiteCache's deletion find what is left through the attempt's record).
        let keys = [
            loc.attempt_archive_key(args.generation, &token),
            loc.attempt_legacy_key(args.generation, &token),
            attempt,
        ];
        for key in keys {
            if let Err(e) = storage::delete(&client, &loc.bucket, &key).await {
                // The record stays while anything of the attempt may.
                tracing::warn!(%key, error = %e, "could not delete this attempt's object");
                break;
            }
        }
    }
    let (mut summary, mut report) = result?;
    summary.ms = super::elapsed_ms(start);
    report.cache_owner = owner;
    Ok((summary, report))
}

/// Uploads the archive (and the legacy copy) of attempt `token`, then commits the manifest.
async fn upload_and_commit(
    client: &aws_sdk_s3::Client,
    args: &SnapshotArgs,
    tree: Tree,
    token: &str,
) -> Result<(SnapshotReport, Report), SnapshotError> {
    let loc = &args.url;
    let manifest_key = loc.manifest_key(args.generation);
    let tree = std::sync::Arc::new(tree);
    let archive_key = loc.attempt_archive_key(args.generation, token);
    tracing::info!(key = %archive_key, "uploading the archive");
    let level = args.level;
    let upload = UploadOptions {
        concurrency: args.upload_concurrency,
    };
    let (stats, size, sha256) = upload_packed(
        client,
        &loc.bucket,
        &archive_key,
        "application/zstd",
        upload,
        {
            let tree = tree.clone();
            move |sink| {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let encoder = archive::FrameEncoder::new(sink, level, threads)?;
                let (encoder, stats) = archive::pack(&tree, encoder, None)?;
                Ok((encoder.finish()?, stats))
            }
        },
    )
    .await?;
    tracing::info!(key = %archive_key, size, files = stats.files, "archive uploaded");

    let legacy_archive_key = if args.legacy {
        let key = loc.attempt_legacy_key(args.generation, token);
        let tree = tree.clone();
        upload_packed(
            client,
            &loc.bucket,
            &key,
            "application/gzip",
            upload,
            move |sink| {
                let encoder = flate2::write::GzEncoder::new(sink, flate2::Compression::new(6));
                let prefix = Path::new(archive::LEGACY_PREFIX);
                let (encoder, stats) = archive::pack(&tree, encoder, Some(prefix))?;
                Ok((encoder.finish()?, stats))
            },
        )
        .await?;
        tracing::info!(key = %key, "legacy archive uploaded");
        Some(key)
    } else {
        None
    };

    // The archive must be there, whole, before the manifest commits it.
    let found = storage::head(client, &loc.bucket, &archive_key)
        .await?
        .map(|(size, _)| size)
        .unwrap_or(0);
    if found != size {
        return Err(SnapshotError::SizeMismatch {
            key: archive_key,
            found,
            expected: size,
        });
    }
    if size > args.max_bytes {
        return Err(SnapshotError::TooLarge {
            key: archive_key,
            size,
            max: args.max_bytes,
        });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        generation: args.generation,
        archive_key: archive_key.clone(),
        format: FORMAT_TAR_ZSTD.to_owned(),
        size_bytes: size,
        sha256: sha256.clone(),
        files: stats.files,
        entries: stats.entries,
        uncompressed_bytes: stats.uncompressed_bytes,
        created_at: jiff::Timestamp::now(),
        source_revision: args.source_revision.clone(),
        legacy_archive_key,
        deno_version: archive::runtime::deno_version(&args.source),
        cache_dir: std::path::absolute(&args.source)
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        writer: archive::writer(),
    };
    storage::put_json(client, &loc.bucket, &manifest_key, &manifest, true)
        .await
        .map_err(|e| match e {
            StorageError::AlreadyExists { key, .. } => SnapshotError::GenerationExists {
                generation: args.generation,
                key,
            },
            other => SnapshotError::Manifest(other),
        })?;
    tracing::info!(key = %manifest_key, "generation committed");
    let summary = SnapshotReport {
        ok: true,
        generation: args.generation,
        key: archive_key,
        size_bytes: size,
        sha256,
        files: stats.files,
        uncompressed_bytes: stats.uncompressed_bytes,
        ms: 0,
    };
    Ok((summary, Report::of(&manifest)))
}

async fn scan_source(
    source: &Path,
    min_files: u64,
    limits: UnpackLimits,
) -> Result<Tree, SnapshotError> {
    let path = source.to_owned();
    let tree = tokio::task::spawn_blocking(move || archive::scan(&path, &limits))
        .await
        .map_err(|e| SnapshotError::Internal(e.to_string()))?
        .map_err(|e| match e {
            PackError::Missing(p) => SnapshotError::SourceMissing(p),
            PackError::NotADirectory(p) => SnapshotError::SourceNotADirectory(p),
            other => SnapshotError::Pack(other),
        })?;
    if tree.entries() == 0 {
        return Err(SnapshotError::SourceEmpty(source.to_owned()));
    }
    if tree.files < min_files {
        return Err(SnapshotError::TooFewFiles {
            path: source.to_owned(),
            files: tree.files,
            min: min_files,
        });
    }
    Ok(tree)
}

/// Runs `produce` (which writes a compressed archive into the sink it is given) on a blocking
/// thread while its output uploads as one object. Returns the pack stats, size and SHA-256.
async fn upload_packed<F>(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    content_type: &str,
    options: UploadOptions,
    produce: F,
) -> Result<(PackStats, u64, String), SnapshotError>
where
    F: FnOnce(PartSink) -> Result<(PartSink, PackStats), ProduceError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    let producer = tokio::task::spawn_blocking(move || {
        let (sink, stats) = produce(PartSink::new(tx))?;
        let (size, sha) = sink.finish()?;
        Ok::<_, ProduceError>((stats, size, sha))
    });
    let uploaded = storage::multipart_upload(client, bucket, key, content_type, rx, options).await;
    let produced = producer
        .await
        .map_err(|e| SnapshotError::Internal(e.to_string()))?;
    match (produced, uploaded) {
        (Ok((stats, size, sha)), Ok(uploaded)) if uploaded == size => Ok((stats, size, sha)),
        (Ok((_, size, _)), Ok(uploaded)) => Err(SnapshotError::SizeMismatch {
            key: key.to_owned(),
            found: uploaded,
            expected: size,
        }),
        // The storage error is the cause; the producer only saw the upload stop.
        (_, Err(UploadError::Storage(e))) => Err(SnapshotError::Upload(e)),
        (Err(ProduceError::Pack(e)), _) => Err(SnapshotError::Pack(e)),
        (Err(ProduceError::Io(e)), _) => Err(SnapshotError::Pack(PackError::Output(e))),
        (Ok(_), Err(UploadError::ProducerFailed)) => Err(SnapshotError::Internal(
            "the upload ended before the archive".into(),
        )),
    }
}

/// Errors of the producing side.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A `Write` that hashes what it is given and hands it to the uploader in parts.
pub struct PartSink {
    tx: mpsc::Sender<Part>,
    buf: BytesMut,
    hasher: Sha256,
    total: u64,
}

impl PartSink {
    fn new(tx: mpsc::Sender<Part>) -> Self {
        Self {
            tx,
            buf: BytesMut::with_capacity(PART_SIZE),
            hasher: Sha256::new(),
            total: 0,
        }
    }

    fn send(&self, part: Part) -> io::Result<()> {
        self.tx
            .blocking_send(part)
            .map_err(|_| io::Error::other("the upload stopped"))
    }

    /// Sends the last part and the end marker; returns the size and the SHA-256 (hex).
    fn finish(mut self) -> io::Result<(u64, String)> {
        if !self.buf.is_empty() || self.total == 0 {
            let last: Bytes = self.buf.split().freeze();
            self.send(Part::Data(last))?;
        }
        self.send(Part::End)?;
        Ok((self.total, hex::encode(self.hasher.finalize())))
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.total += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let room = PART_SIZE - self.buf.len();
            let n = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == PART_SIZE {
                let part = self.buf.split().freeze();
                self.buf.reserve(PART_SIZE);
                self.send(Part::Data(part))?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
