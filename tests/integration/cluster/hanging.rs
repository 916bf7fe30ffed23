//! A warm step that hangs: the Job's deadline, the TTL controller and the garbage collector.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_step_that_hangs() {
    let s = Scenario::new("hang").await;
    let name = "hang";
    s.create_quick_site(name).await;
    s.wait_promoted(name, 1, Duration::from_secs(120)).await;

    // Generation 2's warm step never ends: the Job's deadline (spec.snapshot.timeout) does.
    s.request_snapshot(
        name,
        "hangs",
        json!({
            "warm": {"command": ["deno", "eval", "console.log('warming forever'); await new Promise((r) => setTimeout(r, 3_600_000));"]},
            "snapshot": {"timeout": "20s"},
        }),
    )
    .await;
    let sc = s
        .until(
            "SiteCache hang Degraded by its Job's deadline",
            Duration::from_secs(90),
            async || {
                let Some(sc) = s.sitecache(name).await else {
                    return Poll::Wait("no SiteCache".into());
                };
                let last = sc.status.as_ref().and_then(|s| s.last_snapshot.clone());
                match &last {
                    Some(l) if l.generation == 2 && l.result == Some(SnapshotResult::Failed) => {
                        Poll::Done(sc)
                    }
                    Some(l) if l.generation == 2 && l.result == Some(SnapshotResult::Succeeded) => {
                        Poll::Fail(format!("the hanging snapshot succeeded: {l:?}"))
                    }
                    _ => Poll::Wait(format!("last snapshot {last:?}")),
                }
            },
        )
        .await;
    let degraded = cond(&sc, "Degraded");
    ensure_eq!(
        s,
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "DeadlineExceeded"),
        "{degraded:?}"
    );
    ensure_eq!(
        s,
        current(&sc),
        Some(1),
        "the current generation was not kept"
    );
    ensure_eq!(s, condition(&sc, "Ready"), Some("True"));
    // The real Job controller failed the Job (`Failed` once its pod has terminated; the
    // controller acted on `FailureTarget` already).
    let job_name = format!("{name}-g2");
    let (job, failed) = s
        .until(
            &format!("Job {job_name} Failed"),
            Duration::from_secs(60),
            async || {
                let Ok(job) = s.jobs().get(&job_name).await else {
                    return Poll::Wait("no Job".into());
                };
                let failed = job
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Failed" && c.status == "True");
                match failed {
                    Some(f) => Poll::Done((job, f)),
                    None => Poll::Wait(format!("{:?}", job.status)),
                }
            },
        )
        .await;
    ensure_eq!(s, failed.reason.as_deref(), Some("DeadlineExceeded"));
    ensure_eq!(
        s,
        job.spec.as_ref().unwrap().active_deadline_seconds,
        Some(20)
    );
    let failed_at = failed.last_transition_time.expect("a transition time").0;

    // The TTL controller removes generation 1's finished Job while its SiteCache lives.
    s.until(
        &format!(
            "Job {name}-g1 removed {}s after it finished",
            JOB_TTL.as_secs()
        ),
        JOB_TTL + Duration::from_secs(60),
        async || match s.jobs().get_opt(&format!("{name}-g1")).await {
            Ok(None) => Poll::Done(()),
            other => Poll::Wait(format!("{:?}", other.map(|j| j.map(|j| j.status)))),
        },
    )
    .await;

    // Deleting the SiteCache: the garbage collector removes its Jobs (owner references) and
    // their pods, before the TTL would have removed generation 2's Job.
    s.sitecaches()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let selector = format!("app.kubernetes.io/instance={name}");
    s.until(
        "the SiteCache, its Jobs and their pods gone",
        Duration::from_secs(60),
        async || {
            let lp = ListParams::default().labels(&selector);
            let sc = s.sitecache(name).await.is_some();
            let jobs = s.jobs().list(&lp).await.map(|l| l.items.len());
            let pods = s.pods().list(&lp).await.map(|l| l.items.len());
            match (sc, &jobs, &pods) {
                (false, Ok(0), Ok(0)) => Poll::Done(()),
                _ => Poll::Wait(format!("SiteCache {sc}, Jobs {jobs:?}, pods {pods:?}")),
            }
        },
    )
    .await;
    let gone_after = jiff::Timestamp::now().duration_since(failed_at);
    eprintln!(
        "cluster: {name}-g2 and its pods were gone {:.1}s after it failed (its TTL: {}s)",
        gone_after.as_secs_f64(),
        JOB_TTL.as_secs()
    );
    ensure!(
        s,
        gone_after.as_secs_f64() < JOB_TTL.as_secs_f64(),
        "Job {name}-g2 went {gone_after} after it failed, when its TTL would have removed it: \
         not proved to be the garbage collector's doing"
    );
    s.done("the warm step that hangs");
}
