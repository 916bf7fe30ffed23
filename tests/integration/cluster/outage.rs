//! A result outlives its Job: the controller cannot record generation 2 (its Role in the
//! scenario's namespace loses `sitecaches/status`, as if it were down there) for longer than the
//! Jobs' TTL. The TTL controller deletes the finished Job; the result finalizer keeps it and its
//! pods (whose termination messages are the report) until the controller, allowed again,
//! records generation 2 and releases them; then the Job and its pods go.

use k8s_openapi::api::rbac::v1::Role;
use sitecache::controller::jobs::RESULT_FINALIZER;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_outlives_its_jobs_ttl_while_the_controller_cannot_record_it() {
    let s = Scenario::new("outage").await;
    let name = "outage";
    s.create_quick_site(name).await;
    s.wait_promoted(name, 1, Duration::from_secs(120)).await;

    // Generation 2's warm step takes a while, so that the controller loses its right to write
    // statuses here while the Job runs (not before it started: the status records the start).
    let slow = "const dir = Deno.env.get('DENO_DIR');\n\
                for (let i = 0; i < 5; i++) Deno.writeTextFileSync(`${dir}/file-${i}.txt`, 'y'.repeat(i));\n\
                await new Promise((r) => setTimeout(r, 15_000));";
    s.request_snapshot(
        name,
        "two",
        json!({"warm": {"command": ["deno", "eval", slow]}}),
    )
    .await;
    s.until(
        "generation 2's Job started and recorded",
        Duration::from_secs(90),
        async || match s.sitecache(name).await {
            Some(sc)
                if sc.status.as_ref().and_then(|s| s.active_job.as_deref())
                    == Some("outage-g2") =>
            {
                Poll::Done(())
            }
            other => Poll::Wait(format!(
                "{:?}",
                other
                    .and_then(|sc| sc.status)
                    .map(|s| (s.phase, s.active_job))
            )),
        },
    )
    .await;

    // The controller may no longer write statuses here.
    let roles: Api<Role> = Api::namespaced(s.client.clone(), &s.ns);
    let role = roles.get(RELEASE).await.expect("the chart's Role");
    let mut cut = role.clone();
    cut.metadata.managed_fields = None;
    cut.rules = cut.rules.map(|rules| {
        rules
            .into_iter()
            .filter(|r| {
                !r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.iter().any(|r| r == "sitecaches/status"))
            })
            .collect()
    });
    roles
        .replace(RELEASE, &PostParams::default(), &cut)
        .await
        .expect("cut the Role");

    let job_name = format!("{name}-g2");
    // Finished, then deleted by the TTL controller: kept by the result finalizer, with its pods.
    let job = s
        .until(
            &format!("Job {job_name} finished and deleted by its TTL, still there"),
            JOB_TTL + Duration::from_secs(120),
            async || match s.jobs().get_opt(&job_name).await {
                Ok(Some(job)) if job.metadata.deletion_timestamp.is_some() => Poll::Done(job),
                other => Poll::Wait(format!("{:?}", other.map(|j| j.map(|j| j.status)))),
            },
        )
        .await;
    ensure!(
        s,
        job.finalizers().iter().any(|f| f == RESULT_FINALIZER),
        "{:?}",
        job.metadata
    );
    let selector = format!("job-name={job_name}");
    let pods = s
        .pods()
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    ensure!(
        s,
        !pods.is_empty()
            && pods
                .iter()
                .all(|p| p.finalizers().iter().any(|f| f == RESULT_FINALIZER)),
        "the Job's pods are gone or not held: {:?}",
        pods.iter().map(|p| &p.metadata).collect::<Vec<_>>()
    );
    let sc = s.sitecache(name).await.expect("the SiteCache");
    ensure_eq!(s, current(&sc), Some(1), "the status was written");

    // Allowed again: the result is recorded from the Job the finalizer kept, then released.
    roles
        .replace(
            RELEASE,
            &PostParams::default(),
            &Role {
                metadata: kube::api::ObjectMeta {
                    resource_version: roles.get(RELEASE).await.unwrap().resource_version(),
                    ..cut.metadata.clone()
                },
                rules: role.rules.clone(),
            },
        )
        .await
        .expect("restore the Role");
    let sc = s.wait_promoted(name, 2, Duration::from_secs(180)).await;
    let last = sc.status.as_ref().and_then(|s| s.last_snapshot.clone());
    ensure_eq!(
        s,
        last.as_ref().map(|l| (l.generation, l.result)),
        Some((2, Some(SnapshotResult::Succeeded))),
        "{last:?}"
    );
    s.until(
        &format!("Job {job_name} and its pods gone once released"),
        Duration::from_secs(60),
        async || {
            let job = s.jobs().get_opt(&job_name).await.map(|j| j.is_some());
            let pods = s
                .pods()
                .list(&ListParams::default().labels(&selector))
                .await
                .map(|l| l.items.len());
            match (&job, &pods) {
                (Ok(false), Ok(0)) => Poll::Done(()),
                _ => Poll::Wait(format!("Job there: {job:?}, pods: {pods:?}")),
            }
        },
    )
    .await;
    // What the status names is what the bucket serves.
    let stored = support::s3()
        .await
        .get_bytes(&s.bucket, &format!("{name}/current.json"))
        .await
        .expect("current.json");
    let stored: sitecache::archive::Current = serde_json::from_slice(&stored).unwrap();
    ensure_eq!(s, stored.manifest.generation, 2);
    let archive = support::s3()
        .await
        .get_bytes(&s.bucket, &stored.manifest.archive_key)
        .await;
    ensure!(
        s,
        archive.is_ok(),
        "{} is not there",
        stored.manifest.archive_key
    );
    s.done("a result that outlives its Job's TTL");
}
