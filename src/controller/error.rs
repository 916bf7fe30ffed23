//! Why a reconcile failed. Every error has a kind (the `kind` label of
//! `sitecache_reconcile_errors_total`) and a reason (the Warning Event's reason and the reason of
//! the `Degraded` condition), both derived here by exhaustive matches: a new variant does not
//! compile until it has both. Every error goes through the controller's error policy (per-object
//! backoff), never into a plain requeue.

use crate::storage::{ServiceClass, StorageError};

/// A reconcile that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {op}: {source}")]
    Kube {
        op: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The controller refuses to do what the SiteCache asks for now (for example publish the
    /// legacy copy under another SiteCache's prefix); `reason` names why.
    #[error("{message}")]
    Refused {
        reason: &'static str,
        message: String,
    },
    /// Deletion is under way but cannot finish yet (a snapshot pod still running, objects that
    /// appeared while deleting).
    #[error("deletion not finished: {0}")]
    CleanupPending(String),
    /// The SiteCache changed between the read and the status write; the write was refused and
    /// the next reconcile starts from the new version. Expected now and then, not an incident.
    #[error("the SiteCache changed while it was reconciled; reconciling it again")]
    Conflict,
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub fn kube(op: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { op, source }
    }

    /// A short kind for the `kind` label of metrics: a closed set.
    pub fn kind(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube { .. } => "kube-api",
            Error::Storage(e) => storage_kind(e),
            Error::Refused { .. } => "refused",
            Error::CleanupPending(_) => "cleanup-pending",
            Error::Conflict => "conflict",
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.kind(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => "finalizer",
                F::UnnamedObject | F::InvalidFinalizer => "finalizer",
            },
        }
    }

    /// A CamelCase reason for the Warning Event and the `Degraded` condition; `None` for a write
    /// conflict, which the next reconcile resolves by itself and nobody needs to hear of.
    pub fn reason(&self) -> Option<String> {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube { .. } => Some("KubernetesApiError".into()),
            Error::Storage(e) => Some(e.reason()),
            Error::Refused { reason, .. } => Some((*reason).into()),
            Error::CleanupPending(_) => Some("DeletionPending".into()),
            Error::Conflict => None,
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.reason(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => Some("FinalizerError".into()),
                F::UnnamedObject | F::InvalidFinalizer => Some("FinalizerError".into()),
            },
        }
    }

    /// The error the reconcile itself raised, under the finalizer's wrapping.
    pub fn inner(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }
}

/// The metrics kind of a storage error.
fn storage_kind(e: &StorageError) -> &'static str {
    match e {
        StorageError::NotFound { .. } => "storage-not-found",
        StorageError::AlreadyExists { .. } => "storage-already-exists",
        StorageError::Timeout { .. } => "storage-timeout",
        StorageError::Unreachable { .. } => "storage-unreachable",
        StorageError::Credentials { .. } => "storage-credentials",
        StorageError::Certificate { .. } => "storage-certificate",
        StorageError::Service { .. } => match e.class() {
            Some(ServiceClass::Denied) => "storage-access-denied",
            Some(ServiceClass::NoSuchBucket) => "storage-no-such-bucket",
            Some(ServiceClass::Throttled) => "storage-throttled",
            Some(ServiceClass::Other) | None => "storage-error",
        },
        StorageError::WrongSize { .. } => "storage-wrong-size",
        StorageError::TooLarge { .. } | StorageError::BadDocument { .. } => "storage-bad-document",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str) -> Error {
        Error::Storage(StorageError::Service {
            op: "GET",
            bucket: "b".into(),
            key: "k".into(),
            code: code.into(),
            message: "m".into(),
        })
    }

    #[test]
    fn storage_refusals_keep_their_code_as_reason_and_a_bounded_kind() {
        assert_eq!(service("AccessDenied").reason().unwrap(), "AccessDenied");
        assert_eq!(service("AccessDenied").kind(), "storage-access-denied");
        assert_eq!(service("NoSuchBucket").reason().unwrap(), "NoSuchBucket");
        assert_eq!(service("NoSuchBucket").kind(), "storage-no-such-bucket");
        assert_eq!(service("SlowDown").kind(), "storage-throttled");
        // A code that is no CamelCase word is not a valid condition reason.
        assert_eq!(service("HTTP 500").reason().unwrap(), "StorageError");
        assert_eq!(service("HTTP 500").kind(), "storage-error");
        assert_eq!(service("WeirdVendorCode").kind(), "storage-error");
        assert_eq!(Error::Conflict.reason(), None);
    }
}
