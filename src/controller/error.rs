//! Why a reconcile failed. Each error has a kind that labels metrics and names Events; every
//! error goes through the controller's error policy (per-object backoff), never into a plain
//! requeue.

use crate::storage::StorageError;

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

    /// A short kind for metrics labels and Event reasons.
    pub fn kind(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube { .. } => "kube-api",
            Error::Storage(e) => match e.kind() {
                "timeout" => "storage-timeout",
                "unreachable" => "storage-unreachable",
                "bad-document" => "storage-bad-document",
                _ => "storage-error",
            },
            Error::CleanupPending(_) => "cleanup-pending",
            Error::Conflict => "conflict",
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
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
