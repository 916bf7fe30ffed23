//! Snapshot Jobs that make no progress, reported with what the real Job controller and kubelet
//! say, [`STALL_AFTER`] into the Job rather than at its deadline: a pod that Pod Security refuses
//! (the Job controller's `FailedCreate` message, read through the chart's RBAC), and a container
//! whose credentials Secret does not exist (kubelet's `CreateContainerConfigError`).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_jobs_are_reported_before_their_deadline() {
    let s = Scenario::new("stall").await;
    s.enforce_restricted().await;
    let images = s.node().images().clone();

    // The site image's user, undeclared: Pod Security refuses the pod, and the Job controller
    // tries again until the deadline.
    s.create(
        "refused",
        json!({
            "site": "refused",
            "storage": {"bucket": s.bucket},
            "warm": quick_warm(&images.site, 5),
            "snapshot": {"timeout": "40s", "backoffLimit": 0},
        }),
    )
    .await;
    // Declared (the pod is admitted), but its credentials Secret does not exist: the snapshot
    // container cannot start.
    let mut warm = quick_warm(&images.site, 5);
    warm["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000});
    s.create(
        "nokeys",
        json!({
            "site": "nokeys",
            "storage": {"bucket": s.bucket},
            "warm": warm,
            "snapshot": {"minFiles": 3, "credentialsSecret": {"name": "never-created"}},
        }),
    )
    .await;

    let refused = s.stalled("refused", "SnapshotPodNotCreated").await;
    let message = &cond(&refused, "Degraded").message;
    ensure!(
        s,
        message.starts_with("Job refused-g1 has had no pod for ")
            && message.contains("Error creating: ")
            && message.contains("violates PodSecurity"),
        "{message}"
    );
    let nokeys = s.stalled("nokeys", "SnapshotContainerNotStarting").await;
    let message = &cond(&nokeys, "Degraded").message;
    ensure!(
        s,
        message.starts_with("container snapshot of pod nokeys-g1-")
            && message.contains("CreateContainerConfigError")
            && message.contains("never-created"),
        "{message}"
    );

    // The real Job controller ends the refused Job at its deadline, without a pod.
    let sc = s
        .until(
            "SiteCache refused failing at its deadline",
            Duration::from_secs(90),
            async || {
                let Some(sc) = s.sitecache("refused").await else {
                    return Poll::Wait("no SiteCache".into());
                };
                let failures = sc.status.as_ref().map_or(0, |s| s.consecutive_failures);
                if failures > 0 {
                    Poll::Done(sc)
                } else {
                    Poll::Wait(format!("{:?}", sc.status))
                }
            },
        )
        .await;
    ensure_eq!(s, cond(&sc, "Degraded").reason, "DeadlineExceeded");
    let pods = s
        .pods()
        .list(&ListParams::default().labels("app.kubernetes.io/instance=refused"))
        .await
        .map(|l| l.items.len());
    ensure_eq!(s, pods.ok(), Some(0));
    s.done("stalled Jobs");
}

impl Scenario<'_> {
    /// Waits until SiteCache `name` reports its running Job stalled with `reason`, in
    /// `Progressing` and `Degraded` and with a Warning Event, within [`STALL_AFTER`] and a
    /// minute; returns it.
    async fn stalled(&self, name: &str, reason: &str) -> SiteCache {
        let sc = self
            .until(
                &format!("SiteCache {name} stalled ({reason})"),
                STALL_AFTER + Duration::from_secs(60),
                async || {
                    let Some(sc) = self.sitecache(name).await else {
                        return Poll::Wait("no SiteCache".into());
                    };
                    if sc
                        .status
                        .as_ref()
                        .is_some_and(|s| s.consecutive_failures > 0)
                    {
                        return Poll::Fail(format!("it failed first: {:?}", sc.status));
                    }
                    let degraded = sc
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded").cloned());
                    match degraded {
                        Some(c) if c.reason == reason => Poll::Done(sc),
                        other => Poll::Wait(format!("Degraded: {other:?}")),
                    }
                },
            )
            .await;
        let progressing = cond(&sc, "Progressing");
        ensure_eq!(
            self,
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", reason)
        );
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        self.until(
            &format!("a {reason} Event about {name}"),
            Duration::from_secs(30),
            async || {
                let listed = events.list(&ListParams::default()).await;
                let found = listed.iter().flat_map(|l| &l.items).any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                });
                if found {
                    Poll::Done(())
                } else {
                    Poll::Wait("no Event yet".into())
                }
            },
        )
        .await;
        sc
    }
}
