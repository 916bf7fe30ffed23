//! `sitecache restore`: fetches a generation, verifies it and extracts it, within a deadline.
//!
//! The archive streams in by parallel ranged GETs and is hashed, decompressed and unpacked as the
//! bytes arrive, into a staging directory that replaces DEST only when the checksum matched and
//! every entry was written. Advisory by default: any failure prints a warning and exits 0, so the
//! runner cold-starts as it would without a cache; `--strict` makes failures exit non-zero.
//! Either way one JSON line on stdout says what happened.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::StorageArgs;
use super::install::{self, Layout, Staging};
use super::space::{self, Free, Need};
use crate::archive::{
    self, Compression, Current, Declared, Manifest, Piece, UnpackError, UnpackLimits, Unpacker,
};
use crate::storage::{self, CaBundleError, DownloadOptions, Location, StorageError};

/// Fetch, verify and extract a generation into a directory.
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Where the site's generations live.
    #[arg(long, env = "SITECACHE_URL", value_name = "s3://BUCKET/PREFIX/")]
    pub url: String,

    /// The directory to restore into (DENO_DIR). It is replaced as a whole, and only once the
    /// archive checked out.
    #[arg(long, env = "SITECACHE_DEST", value_name = "DIR")]
    pub dest: PathBuf,

    /// Restore this generation instead of the promoted one (current.json).
    #[arg(long, conflicts_with = "key")]
    pub generation: Option<u64>,

    /// Restore this object (a key in the bucket) instead, for example a legacy cache.tgz; the
    /// format is detected from its bytes.
    #[arg(long)]
    pub key: Option<String>,

    /// Hard deadline of the whole command.
    #[arg(long, env = "SITECACHE_TIMEOUT", default_value = "30s", value_parser = super::parse_duration)]
    pub timeout: Duration,

    /// Exit non-zero on failure (default: warn and exit 0, so the wake-up goes on).
    #[arg(long, env = "SITECACHE_STRICT", value_parser = clap::builder::BoolishValueParser::new())]
    pub strict: bool,

    /// Refuse archives larger than this.
    #[arg(long, default_value = super::DEFAULT_MAX_BYTES, value_parser = super::parse_size)]
    pub max_bytes: u64,

    /// Refuse archives that unpack to more than this (directories count 4 KiB each). In a pod,
    /// set it from the Downward API (`limits.ephemeral-storage`) where DEST is on the pod's
    /// ephemeral storage.
    #[arg(long, env = "SITECACHE_MAX_UNPACKED_BYTES", default_value = super::DEFAULT_MAX_UNPACKED_BYTES, value_parser = super::parse_size)]
    pub max_unpacked_bytes: u64,

    /// Refuse archives with more entries than this (directories created as missing parents
    /// included).
    #[arg(long, default_value_t = UnpackLimits::default().max_entries, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_entries: u64,

    /// The runner's Deno version (`deno --version`, `Deno.version.deno`): the result line says
    /// when the generation was warmed by another, whose V8 code cache this Deno discards.
    #[arg(long, env = "SITECACHE_RUNTIME_VERSION", value_name = "VERSION")]
    pub runtime_version: Option<String>,

    /// Threads writing files (default: twice the CPUs, 2 to 16).
    #[arg(long, hide = true, env = "SITECACHE_RESTORE_THREADS")]
    pub threads: Option<usize>,

    /// Threads decompressing the archive (default: the CPUs, 1 to 4).
    #[arg(long, hide = true, env = "SITECACHE_DECODE_THREADS")]
    pub decode_threads: Option<usize>,

    /// Ranged GETs in flight.
    #[arg(long, default_value_t = 6, hide = true)]
    pub download_concurrency: usize,

    /// Bytes per ranged GET.
    #[arg(long, default_value = "8MiB", value_parser = super::parse_size, hide = true)]
    pub chunk_size: u64,

    #[command(flatten)]
    pub storage: StorageArgs,
}

/// The JSON line a restore prints on stdout.
#[derive(Debug, Serialize, PartialEq)]
pub struct RestoreReport {
    pub ok: bool,
    /// `restored`, or why not: `no-current-generation`, `not-found`, `timeout`, `too-large`,
    /// `no-space`,
    /// `size-mismatch`, `checksum-mismatch`, `corrupt-archive`, `unsafe-entry`, `storage-error`, …
    pub reason: String,
    pub generation: Option<u64>,
    /// Archive bytes downloaded.
    pub bytes: u64,
    /// Regular files restored.
    pub files: u64,
    pub ms: u64,
    /// What happened, in words.
    pub message: String,
    /// The Deno version that warmed the restored generation, when its manifest records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Whether it differs from `--runtime-version` (absent when either is unknown): Deno then
    /// discards the generation's V8 code cache on its first start.
    #[serde(rename = "runtimeMismatch", skip_serializing_if = "Option::is_none")]
    pub runtime_mismatch: Option<bool>,
    /// Whether DEST is another path than the one the generation was warmed at (absent when the
    /// manifest does not say): Deno's code cache of npm packages then does not apply.
    #[serde(rename = "cacheDirMismatch", skip_serializing_if = "Option::is_none")]
    pub cache_dir_mismatch: Option<bool>,
}

/// Why a restore failed. DEST was not changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("--url: {0}")]
    BadUrl(String),
    #[error("no generation has been promoted at {0} yet")]
    NoCurrent(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the restore did not finish within --timeout {0}")]
    Timeout(String),
    #[error("{what} is {size} {unit}, over {flag} {max}")]
    TooLarge {
        what: String,
        size: u64,
        unit: &'static str,
        flag: &'static str,
        max: u64,
    },
    #[error("--dest: {0}")]
    NoSpace(#[from] space::Shortfall),
    #[error("{key} is {found} bytes but its manifest says {expected}")]
    SizeMismatch {
        key: String,
        found: u64,
        expected: u64,
    },
    #[error("{key}: SHA-256 {found} does not match the manifest's {expected}")]
    ChecksumMismatch {
        key: String,
        found: String,
        expected: String,
    },
    #[error("{key} is neither a zstd nor a gzip archive")]
    UnknownFormat { key: String },
    #[error("manifest {key} is of format version {version}, newer than this restore understands")]
    UnsupportedFormat { key: String, version: u32 },
    #[error("extracting: {0}")]
    Unpack(#[from] UnpackError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    CaBundle(#[from] CaBundleError),
    #[error("--dest {path}: {source}")]
    Dest { path: PathBuf, source: io::Error },
    #[error("internal error: {0}")]
    Internal(String),
}

impl RestoreError {
    /// The `reason` of the result line.
    pub fn reason(&self) -> &'static str {
        match self {
            RestoreError::BadUrl(_) | RestoreError::CaBundle(_) => "invalid-arguments",
            RestoreError::NoCurrent(_) => "no-current-generation",
            RestoreError::NotFound(_) => "not-found",
            RestoreError::Timeout(_) => "timeout",
            RestoreError::TooLarge { .. } => "too-large",
            RestoreError::NoSpace(_) => "no-space",
            RestoreError::SizeMismatch { .. } => "size-mismatch",
            RestoreError::ChecksumMismatch { .. } => "checksum-mismatch",
            RestoreError::UnknownFormat { .. } | RestoreError::UnsupportedFormat { .. } => {
                "unsupported-format"
            }
            RestoreError::Unpack(e) => e.kind(),
            RestoreError::Storage(StorageError::Timeout { .. }) => "timeout",
            RestoreError::Storage(StorageError::NotFound { .. }) => "not-found",
            RestoreError::Storage(StorageError::WrongSize { .. }) => "size-mismatch",
            RestoreError::Storage(e @ StorageError::Certificate { .. }) => e.kind(),
            RestoreError::Storage(_) => "storage-error",
            RestoreError::Dest { .. } => "dest-error",
            RestoreError::Internal(_) => "internal-error",
        }
    }
}

/// What is being restored.
struct Target {
    key: String,
    generation: Option<u64>,
    /// Size and checksum from a manifest, when there is one.
    expected: Option<(u64, String)>,
    /// What the manifest says the archive holds: hard limits of the unpack.
    declared: Option<Declared>,
    /// What the manifest says warmed it.
    warmed: Warmed,
}

/// Which Deno warmed a generation, and where (from its manifest).
#[derive(Clone, Debug, Default)]
struct Warmed {
    deno_version: Option<String>,
    cache_dir: Option<String>,
}

struct Restored {
    generation: Option<u64>,
    warmed: Warmed,
    bytes: u64,
    files: u64,
    /// Where the install's scratch trees are, to sweep.
    installed: Layout,
}

/// Decides, once, between the restore putting its checked tree in place and the deadline
/// abandoning it, so that a timeout never interrupts the swap half way.
#[derive(Default)]
struct CommitGate(AtomicU8);

impl CommitGate {
    const RUNNING: u8 = 0;
    const COMMITTING: u8 = 1;
    const ABANDONED: u8 = 2;

    /// The restore's side: whether it may install (the deadline has not abandoned it).
    fn commit(&self) -> bool {
        self.swap_from_running(Self::COMMITTING)
    }

    /// The deadline's side: whether the restore is abandoned (false: it is already installing).
    fn abandon(&self) -> bool {
        self.swap_from_running(Self::ABANDONED)
    }

    fn swap_from_running(&self, to: u8) -> bool {
        self.0
            .compare_exchange(Self::RUNNING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

fn joined(
    result: Result<Result<Restored, RestoreError>, tokio::task::JoinError>,
) -> Result<Restored, RestoreError> {
    result.unwrap_or_else(|join_error| {
        Err(RestoreError::Internal(format!(
            "the restore task failed: {join_error}"
        )))
    })
}

/// What a restore leaves for [`run`] to finish, whatever becomes of it (a failure, or the
/// deadline abandoning it part way).
#[derive(Default)]
struct Leftovers {
    /// The staging tree, while it is not installed.
    staging: Option<PathBuf>,
    /// Disconnected once nothing writes into the staging tree any more (the unpack's threads
    /// have stopped): only then can its removal be complete.
    writers: Option<std::sync::mpsc::Receiver<()>>,
    /// The sweep of earlier restores' leftovers, started with the restore.
    early_sweep: Option<tokio::task::JoinHandle<io::Result<usize>>>,
}

type LeftoverSlot = Arc<std::sync::Mutex<Leftovers>>;

fn leftovers(slot: &LeftoverSlot) -> std::sync::MutexGuard<'_, Leftovers> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a failed or abandoned restore waits, past its deadline, for its unpack to stop and
/// its staging tree to be removed.
const CLEANUP_GRACE: Duration = Duration::from_secs(2);

/// Runs a restore and returns its result line. Never panics. Returns by the deadline plus a
/// short grace for cleanup, except that a restore whose tree checked out and is being put in
/// place (a few renames) when the deadline passes finishes doing so.
pub async fn run(args: RestoreArgs) -> RestoreReport {
    let start = Instant::now();
    let cancel = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(CommitGate::default());
    let slot = LeftoverSlot::default();
    let mut task = tokio::spawn(restore(
        args.clone(),
        cancel.clone(),
        gate.clone(),
        slot.clone(),
    ));
    let outcome = match tokio::time::timeout(args.timeout, &mut task).await {
        Ok(result) => joined(result),
        Err(_) if gate.abandon() => {
            cancel.store(true, Ordering::Relaxed);
            task.abort();
            Err(RestoreError::Timeout(crate::api::duration::format(
                args.timeout,
            )))
        }
        // Past the deadline while swapping the checked tree in: finishing is quicker, and
        // stopping could leave DEST half installed.
        Err(_) => joined(task.await),
    };
    let (staging, writers, early_sweep) = {
        let mut left = leftovers(&slot);
        (
            left.staging.take(),
            left.writers.take(),
            left.early_sweep.take(),
        )
    };
    if let Some(path) = staging.filter(|_| outcome.is_err()) {
        // The staging tree of a failed or abandoned restore (DEST itself was never touched),
        // once the unpack has stopped writing into it: cancelled, it stops at its next piece.
        let cleanup = tokio::task::spawn_blocking(move || {
            if let Some(writers) = writers {
                let _ = writers.recv_timeout(CLEANUP_GRACE);
            }
            install::remove_tree(&path)
        });
        if let Ok(Ok(Err(e))) = tokio::time::timeout(CLEANUP_GRACE, cleanup).await {
            tracing::warn!("removing the staging tree: {e}");
        }
    }
    // Earlier restores' leftovers, being removed since this one started: given what is left of
    // the deadline (or the grace, past it) to finish.
    if let Some(sweep) = early_sweep {
        let left = args
            .timeout
            .saturating_sub(start.elapsed())
            .max(CLEANUP_GRACE);
        match tokio::time::timeout(left, sweep).await {
            Ok(Ok(Ok(n))) if n > 0 => tracing::debug!(trees = n, "swept earlier leftovers"),
            Ok(Ok(Err(e))) => tracing::warn!("removing earlier leftovers beside --dest: {e}"),
            _ => {}
        }
    }
    // Housekeeping within what is left of the deadline: the tree DEST held before, and what
    // failed or killed restores left. Whatever is not done by then, the next restore does.
    let left = args.timeout.saturating_sub(start.elapsed());
    if let Ok(r) = &outcome
        && !left.is_zero()
    {
        let layout = r.installed.clone();
        let sweep = tokio::task::spawn_blocking(move || install::sweep(&layout));
        match tokio::time::timeout(left, sweep).await {
            Ok(Ok(Ok(n))) => tracing::debug!(trees = n, "swept"),
            Ok(Ok(Err(e))) => tracing::warn!("removing old trees beside --dest: {e}"),
            _ => {}
        }
    }
    let ms = super::elapsed_ms(start);
    match outcome {
        Ok(r) => {
            let fit = CodeCacheFit::of(&r.warmed, &args);
            RestoreReport {
                ok: true,
                reason: "restored".to_owned(),
                generation: r.generation,
                bytes: r.bytes,
                files: r.files,
                ms,
                message: format!(
                    "restored {} files into {}{}",
                    r.files,
                    args.dest.display(),
                    fit.note(&r.warmed, &args)
                ),
                runtime: r.warmed.deno_version.clone(),
                runtime_mismatch: fit.runtime_mismatch,
                cache_dir_mismatch: fit.cache_dir_mismatch,
            }
        }
        Err(e) => RestoreReport {
            ok: false,
            reason: e.reason().to_owned(),
            generation: None,
            bytes: 0,
            files: 0,
            ms,
            message: e.to_string(),
            runtime: None,
            runtime_mismatch: None,
            cache_dir_mismatch: None,
        },
    }
}

/// Whether the V8 code cache a generation holds is of use to this runner.
#[derive(Debug, Default, PartialEq)]
struct CodeCacheFit {
    runtime_mismatch: Option<bool>,
    cache_dir_mismatch: Option<bool>,
}

impl CodeCacheFit {
    fn of(warmed: &Warmed, args: &RestoreArgs) -> Self {
        let runtime_mismatch = match (&warmed.deno_version, &args.runtime_version) {
            (Some(theirs), Some(ours)) => {
                Some(theirs.trim_start_matches('v') != ours.trim_start_matches('v'))
            }
            _ => None,
        };
        let cache_dir_mismatch = warmed.cache_dir.as_ref().map(|warmed_at| {
            let dest = std::path::absolute(&args.dest).unwrap_or_else(|_| args.dest.clone());
            std::path::Path::new(warmed_at) != dest
        });
        CodeCacheFit {
            runtime_mismatch,
            cache_dir_mismatch,
        }
    }

    /// What the message says of it: nothing when the code cache applies (or it is not known).
    fn note(&self, warmed: &Warmed, args: &RestoreArgs) -> String {
        let mut out = String::new();
        if self.runtime_mismatch == Some(true) {
            out.push_str(&format!(
                "; warmed by Deno {}, this runner's is {}: Deno discards its V8 code cache on \
                 the first start",
                warmed.deno_version.as_deref().unwrap_or_default(),
                args.runtime_version.as_deref().unwrap_or_default()
            ));
        }
        if self.cache_dir_mismatch == Some(true) {
            out.push_str(&format!(
                "; warmed at {}: Deno's code cache of npm packages applies only there",
                warmed.cache_dir.as_deref().unwrap_or_default()
            ));
        }
        out
    }
}

async fn restore(
    args: RestoreArgs,
    cancel: Arc<AtomicBool>,
    gate: Arc<CommitGate>,
    slot: LeftoverSlot,
) -> Result<Restored, RestoreError> {
    let loc: Location = args
        .url
        .parse()
        .map_err(|e: storage::LocationError| RestoreError::BadUrl(e.to_string()))?;
    let attempt = args.timeout.min(Duration::from_secs(15));
    // Throttling and failed requests are retried within the deadline (`--timeout` bounds it all).
    // A bad --ca-bundle fails here, before any request (and, advisory, exits 0 as any failure).
    let client = storage::client(&args.storage.options(Some(attempt), 5)?).await;
    let phase = Instant::now();
    let target = resolve(&client, &loc, &args).await?;
    tracing::debug!(ms = super::elapsed_ms(phase), key = %target.key, "resolved");

    let (size, etag) = match &target.expected {
        // The manifest gives the size: no HEAD. The ranges check the size and one ETag instead.
        Some((size, _)) => (*size, None),
        None => storage::head(&client, &loc.bucket, &target.key)
            .await?
            .ok_or_else(|| {
                RestoreError::NotFound(format!("s3://{}/{} does not exist", loc.bucket, target.key))
            })?,
    };
    if size > args.max_bytes {
        return Err(RestoreError::TooLarge {
            what: format!("s3://{}/{}", loc.bucket, target.key),
            size,
            unit: "bytes",
            flag: "--max-bytes",
            max: args.max_bytes,
        });
    }
    if let Some(declared) = target.declared {
        refuse_declared(declared, &args)?;
    }

    let staging = on_dest(&args.dest, {
        let dest = args.dest.clone();
        let cancel = cancel.clone();
        move || install::prepare(&dest, &cancel)
    })
    .await?;
    {
        let layout = staging.layout().clone();
        let mut left = leftovers(&slot);
        left.staging = Some(staging.path.clone());
        left.early_sweep = Some(tokio::task::spawn_blocking(move || install::sweep(&layout)));
    }
    if let Some(declared) = target.declared {
        // Beside the tree DEST holds now, which stays until the new one is in place.
        let dir = staging.path.clone();
        let free = on_dest(&args.dest, move || Free::of(&dir)).await?;
        let need = Need::of(declared.file_bytes, declared.entries);
        if let Err(short) = free.check(need, &args.dest) {
            // `run` removes the staging tree.
            return Err(short.into());
        }
    }

    let phase = Instant::now();
    let result = fetch_and_unpack(
        &client,
        &loc,
        &target,
        size,
        etag,
        &args,
        &staging,
        cancel.clone(),
        &slot,
    )
    .await;
    tracing::debug!(
        ms = super::elapsed_ms(phase),
        ok = result.is_ok(),
        "fetched and unpacked"
    );
    // On failure, `run` removes the staging tree.
    let files = result?;

    // Another restore may be installing into DEST: wait for it, within the deadline.
    let (staging, lock) = on_dest(&args.dest, move || {
        let lock = staging.lock_install(&cancel)?;
        Ok((staging, lock))
    })
    .await?;
    if !gate.commit() {
        // The deadline passed; `run` reports it and removes the staging directory.
        return Err(RestoreError::Timeout(crate::api::duration::format(
            args.timeout,
        )));
    }
    let installed = on_dest(&args.dest, move || staging.install(lock)).await?;
    leftovers(&slot).staging = None;
    tracing::debug!(
        ms = super::elapsed_ms(phase),
        "installed (ms since the download started)"
    );
    Ok(Restored {
        generation: target.generation,
        warmed: target.warmed.clone(),
        bytes: size,
        files,
        installed,
    })
}

/// Refuses, before anything is downloaded, a generation whose manifest declares more than the
/// flags allow: the unpack would stop there anyway, after the download.
fn refuse_declared(declared: Declared, args: &RestoreArgs) -> Result<(), RestoreError> {
    let limits = [
        (
            "the generation's files (its manifest's uncompressedBytes)",
            declared.file_bytes,
            "bytes",
            "--max-unpacked-bytes",
            args.max_unpacked_bytes,
        ),
        (
            "the generation (its manifest's entries)",
            declared.entries,
            "entries",
            "--max-entries",
            args.max_entries,
        ),
    ];
    match limits.into_iter().find(|(_, size, _, _, max)| size > max) {
        Some((what, size, unit, flag, max)) => Err(RestoreError::TooLarge {
            what: what.to_owned(),
            size,
            unit,
            flag,
            max,
        }),
        None => Ok(()),
    }
}

/// Runs filesystem work on DEST on a blocking thread; its errors name `--dest`.
async fn on_dest<T: Send + 'static>(
    dest: &std::path::Path,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RestoreError::Internal(e.to_string()))?
        .map_err(|source| RestoreError::Dest {
            path: dest.to_owned(),
            source,
        })
}

async fn resolve(
    client: &aws_sdk_s3::Client,
    loc: &Location,
    args: &RestoreArgs,
) -> Result<Target, RestoreError> {
    let manifest: Manifest = if let Some(key) = &args.key {
        // A generation's archive is verified against its manifest; any other key (a legacy
        // tarball) by its own format's checks.
        let Some(n) = loc
            .generation_of_key(key)
            .filter(|n| loc.archive_token(*n, key).is_some())
        else {
            return Ok(Target {
                key: key.clone(),
                generation: None,
                expected: None,
                declared: None,
                warmed: Warmed::default(),
            });
        };
        let manifest = read_manifest(client, loc, n).await?;
        if manifest.archive_key != *key {
            return Err(RestoreError::NotFound(format!(
                "{key} is not what generation {n} committed ({} is)",
                manifest.archive_key
            )));
        }
        manifest
    } else if let Some(n) = args.generation {
        read_manifest(client, loc, n).await?
    } else {
        let current: Current = storage::get_json(client, &loc.bucket, &loc.current_key())
            .await?
            .ok_or_else(|| RestoreError::NoCurrent(loc.to_string()))?;
        current.manifest
    };
    // A manifest names an archive of its own generation, and `--generation N` reads N's: one
    // that names any other key (another generation's, anything under the prefix or outside it)
    // was not written by a snapshot, whoever could write to the bucket.
    let n = manifest.generation;
    let asked = args.generation.filter(|_| args.key.is_none());
    if asked.is_some_and(|g| g != n) || loc.archive_token(n, &manifest.archive_key).is_none() {
        return Err(RestoreError::NotFound(format!(
            "the manifest of generation {} names {} for generation {n}, which is not an archive \
             of that generation",
            asked.unwrap_or(n),
            manifest.archive_key
        )));
    }
    if manifest.format_version > archive::FORMAT_VERSION {
        return Err(RestoreError::UnsupportedFormat {
            key: manifest.archive_key,
            version: manifest.format_version,
        });
    }
    Ok(Target {
        key: manifest.archive_key,
        generation: Some(manifest.generation),
        expected: Some((manifest.size_bytes, manifest.sha256)),
        declared: Some(Declared {
            file_bytes: manifest.uncompressed_bytes,
            entries: manifest.entries,
        }),
        warmed: Warmed {
            deno_version: manifest.deno_version,
            cache_dir: manifest.cache_dir,
        },
    })
}

async fn read_manifest(
    client: &aws_sdk_s3::Client,
    loc: &Location,
    generation: u64,
) -> Result<Manifest, RestoreError> {
    let key = loc.manifest_key(generation);
    storage::get_json(client, &loc.bucket, &key)
        .await?
        .ok_or_else(|| {
            RestoreError::NotFound(format!(
                "generation {generation} is not committed at {loc} ({key} does not exist)"
            ))
        })
}

/// Downloads the archive and unpacks it into the staging directory as it arrives; verifies size
/// and checksum at the end. Returns the number of regular files.
#[allow(clippy::too_many_arguments)]
async fn fetch_and_unpack(
    client: &aws_sdk_s3::Client,
    loc: &Location,
    target: &Target,
    size: u64,
    etag: Option<String>,
    args: &RestoreArgs,
    staging: &Staging,
    cancel: Arc<AtomicBool>,
    slot: &LeftoverSlot,
) -> Result<u64, RestoreError> {
    // Downloaded chunks queued for hashing and decompression (the ranges in flight are
    // `download_concurrency` more): see docs/runner.md for the memory each stage may hold.
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(DOWNLOADED_AHEAD);
    let unpacker = Unpacker {
        root: staging.path.clone(),
        strip_prefix: None,
        workers: args.threads.unwrap_or_else(default_threads),
        limits: UnpackLimits {
            max_bytes: args.max_unpacked_bytes,
            max_entries: args.max_entries,
            declared: target.declared,
            ..UnpackLimits::default()
        },
        cancel,
        umask: None,
    };
    let key = target.key.clone();
    let decode = archive::DecodeOptions {
        threads: args.decode_threads.unwrap_or_else(|| cpus().min(4)),
        // With the manifest's SHA-256 to check, the frames' own checksums add nothing.
        frame_checksums: target.expected.is_none(),
    };
    let (writing, writers) = std::sync::mpsc::channel::<()>();
    leftovers(slot).writers = Some(writers);
    let consumer = tokio::task::spawn_blocking(move || {
        // Dropped when the unpack's threads have all stopped, whether this task lives or not.
        let _writing = writing;
        unpack_stream(rx, unpacker, decode, &key)
    });

    let mut chunks = std::pin::pin!(storage::ranged_download(
        client.clone(),
        loc.bucket.clone(),
        target.key.clone(),
        size,
        etag,
        DownloadOptions {
            chunk_size: args.chunk_size,
            concurrency: args.download_concurrency,
        },
    ));
    let mut download_error = None;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(bytes) => {
                if tx.send(Ok(bytes)).await.is_err() {
                    break; // the consumer failed; its error says why
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                download_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let consumed = consumer
        .await
        .map_err(|e| RestoreError::Internal(e.to_string()))?;
    if let Some(e) = download_error {
        return Err(e.into());
    }
    let (stats, read, sha) = consumed?;
    if read != size {
        return Err(RestoreError::SizeMismatch {
            key: target.key.clone(),
            found: read,
            expected: size,
        });
    }
    if let Some((_, expected)) = &target.expected
        && !expected.eq_ignore_ascii_case(&sha)
    {
        return Err(RestoreError::ChecksumMismatch {
            key: target.key.clone(),
            found: sha,
            expected: expected.clone(),
        });
    }
    Ok(stats.files)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn default_threads() -> usize {
    (cpus() * 2).clamp(2, 16)
}

/// The blocking side. One thread hashes what arrives on `rx` and hands its frames to
/// `decode.threads` threads, a few steps ahead; this one parses and unpacks. Once the archive's
/// end is reached, the rest of the stream is still read so that the whole object is hashed (and
/// the decompressor's own checks run).
fn unpack_stream(
    rx: mpsc::Receiver<Result<Bytes, String>>,
    mut unpacker: Unpacker,
    decode: archive::DecodeOptions,
    key: &str,
) -> Result<(archive::UnpackStats, u64, String), RestoreError> {
    let mut input = HashedChunks {
        rx,
        hasher: Sha256::new(),
        total: 0,
    };
    // The first bytes say the format (the first chunk is a whole ranged GET, unless the object
    // is tiny).
    let mut head = Bytes::new();
    while head.len() < 4 {
        match input.next().transpose().map_err(UnpackError::Read)? {
            Some(chunk) if head.is_empty() => head = chunk,
            Some(chunk) => head = [head, chunk].concat().into(),
            None => break,
        }
    }
    let compression = Compression::detect(&head).ok_or_else(|| RestoreError::UnknownFormat {
        key: key.to_owned(),
    })?;
    if compression == Compression::Gzip {
        unpacker.strip_prefix = Some(PathBuf::from(archive::LEGACY_PREFIX));
    }
    let (tx, pieces) = std::sync::mpsc::sync_channel::<Piece>(DECOMPRESSED_AHEAD);
    std::thread::scope(|scope| {
        let decompressor = scope.spawn(move || -> io::Result<(u64, String)> {
            let mut all = std::iter::once(Ok(head)).chain(&mut input);
            if let Err(e) = archive::decompress(compression, &mut all, decode, &mut |piece| {
                tx.send(piece).is_ok()
            }) {
                let message = e.to_string();
                let _ = tx.send(Piece::Ready(Err(e)));
                return Err(io::Error::other(message));
            }
            drop(tx);
            for chunk in &mut input {
                chunk?;
            }
            Ok((input.total, hex::encode(input.hasher.finalize())))
        });
        let mut chunks = pieces.into_iter().map(Piece::wait);
        let unpacked = unpacker.unpack(&mut chunks).and_then(|stats| {
            // Past the archive's end markers: read on so that the decompressor reaches the end.
            for chunk in &mut chunks {
                chunk.map_err(UnpackError::Read)?;
            }
            Ok(stats)
        });
        // On failure, stop the decompressor (its next send fails).
        drop(chunks);
        let hashed = decompressor
            .join()
            .map_err(|_| RestoreError::Internal("the decompressor panicked".into()))?;
        let stats = unpacked?;
        let (total, sha) = hashed.map_err(UnpackError::Read)?;
        Ok((stats, total, sha))
    })
}

/// Decompressed pieces (a zstd frame each, 4 MiB) queued for the parser at most, beyond those
/// being decompressed.
const DECOMPRESSED_AHEAD: usize = 2;

/// Downloaded chunks queued for the hashing thread at most.
const DOWNLOADED_AHEAD: usize = 2;

/// The chunks sent by the downloader, in order, hashed and counted as they are taken.
struct HashedChunks {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    hasher: Sha256,
    total: u64,
}

impl Iterator for HashedChunks {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        match self.rx.blocking_recv()? {
            Ok(chunk) => {
                self.hasher.update(&chunk);
                self.total += chunk.len() as u64;
                Some(Ok(chunk))
            }
            Err(message) => Some(Err(io::Error::other(message))),
        }
    }
}

/// Prints the result line and any warning, and returns the exit code.
pub fn report(report: &RestoreReport, strict: bool) -> std::process::ExitCode {
    println!(
        "{}",
        serde_json::to_string(report).expect("the report serializes")
    );
    if report.ok {
        std::process::ExitCode::SUCCESS
    } else if strict {
        eprintln!("error: restore failed: {}", report.message);
        std::process::ExitCode::FAILURE
    } else {
        eprintln!(
            "warning: restore failed ({}): {}; continuing without a cache",
            report.reason, report.message
        );
        std::process::ExitCode::SUCCESS
    }
}

/// Whether a restore is strict, read from raw arguments (for argument errors, which happen before
/// the arguments are parsed).
pub fn strict_in_args(args: &[std::ffi::OsString]) -> bool {
    args.iter().any(|a| a == "--strict")
        || std::env::var("SITECACHE_STRICT").is_ok_and(|v| {
            // As clap's BoolishValueParser reads it.
            matches!(
                v.to_ascii_lowercase().as_str(),
                "y" | "yes" | "t" | "true" | "on" | "1"
            )
        })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RestoreArgs,
    }

    fn args(extra: &[&str]) -> RestoreArgs {
        let base = ["restore", "--url", "s3://b/p/", "--dest", "/d"];
        Cli::parse_from(base.iter().chain(extra)).args
    }

    #[test]
    fn what_a_manifest_declares_is_refused_past_either_flag_naming_it() {
        let declared = |file_bytes, entries| Declared {
            file_bytes,
            entries,
        };
        let a = args(&["--max-unpacked-bytes", "1000", "--max-entries", "10"]);
        assert!(refuse_declared(declared(1000, 10), &a).is_ok());
        let e = refuse_declared(declared(1001, 10), &a).unwrap_err();
        assert_eq!(e.reason(), "too-large");
        assert!(
            e.to_string()
                .contains("1001 bytes, over --max-unpacked-bytes 1000"),
            "{e}"
        );
        let e = refuse_declared(declared(5, 11), &a).unwrap_err();
        assert!(
            e.to_string().contains("11 entries, over --max-entries 10"),
            "{e}"
        );
    }
}
