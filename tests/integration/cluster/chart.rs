//! The chart installed with Helm on the real node: two replicas Ready through kubelet's probes,
//! the chart's ServiceAccount and RBAC, exactly one Lease holder.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_two_replicas_with_one_leader() {
    let s = Scenario::release().await;
    let c = s.c;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &c.release_ns);
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &c.release_ns);
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &c.release_ns);
    let selector = "app.kubernetes.io/name=sitecache,app.kubernetes.io/component=controller";

    // Helm waited for the Deployment; kubelet's readiness probes (/readyz) keep both Ready, and
    // its liveness probes (/healthz, 3 failures 10 s apart restart a container) never failed:
    // both ran 35 s without a restart.
    let controllers = s
        .until(
            "two Ready controller pods that ran 35 s without a restart",
            Duration::from_secs(90),
            async || {
                let ready = deployments
                    .get(RELEASE)
                    .await
                    .ok()
                    .and_then(|d| d.status?.ready_replicas);
                let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else {
                    return Poll::Wait("no pods".into());
                };
                let mut seen = Vec::new();
                let mut ran = 0;
                for pod in &list.items {
                    let status = pod.status.clone().unwrap_or_default();
                    let Some(c) = status.container_statuses.iter().flatten().next() else {
                        seen.push(format!("{}: no container status", pod.name_any()));
                        continue;
                    };
                    if c.restart_count > 0 {
                        return Poll::Fail(format!(
                            "{} restarted {} times: {:?}",
                            pod.name_any(),
                            c.restart_count,
                            c.last_state
                        ));
                    }
                    let running_for = c
                        .state
                        .as_ref()
                        .and_then(|s| s.running.as_ref()?.started_at.clone())
                        .map(|t| jiff::Timestamp::now().duration_since(t.0).as_secs());
                    if c.ready && running_for.is_some_and(|s| s >= 35) {
                        ran += 1;
                    }
                    seen.push(format!(
                        "{}: ready {}, running for {running_for:?}s",
                        pod.name_any(),
                        c.ready
                    ));
                }
                let all_ran = list.items.len() == 2 && ran == 2;
                if ready == Some(2) && all_ran {
                    Poll::Done(list.items)
                } else {
                    Poll::Wait(format!("ready replicas {ready:?}; {}", seen.join("; ")))
                }
            },
        )
        .await;
    let names: BTreeSet<String> = controllers.iter().map(|p| p.name_any()).collect();
    for pod in &controllers {
        let spec = pod.spec.as_ref().unwrap();
        // The chart's ServiceAccount, whose token kubelet projected: what the API server
        // authenticates the controller by, and the chart's RBAC authorizes.
        ensure_eq!(s, spec.service_account_name.as_deref(), Some(RELEASE));
        ensure!(
            s,
            spec.volumes
                .iter()
                .flatten()
                .any(|v| v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.service_account_token.is_some())
                })),
            "no projected service account token in {}: {:?}",
            pod.name_any(),
            spec.volumes
        );
        let controller = &spec.containers[0];
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref()?.path.clone())
                .unwrap_or_default()
        };
        ensure_eq!(s, probe_path(&controller.liveness_probe), "/healthz");
        ensure_eq!(s, probe_path(&controller.readiness_probe), "/readyz");
    }
    // Kubelet reported no liveness probe failure (a readiness probe may fail once, before the
    // controller listens: the pod is not Ready yet).
    let events: Api<Event> = Api::namespaced(s.client.clone(), &c.release_ns);
    let unhealthy: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Unhealthy"))
        .filter_map(|e| e.note)
        .filter(|note| note.starts_with("Liveness"))
        .collect();
    if !unhealthy.is_empty() {
        s.fail(&format!("kubelet's liveness probes failed: {unhealthy:?}"))
            .await;
    }

    // Exactly one leader: the Lease's holder is one of the two pods (their POD_NAME), written
    // with the controller's own token; the holder says it leads, the other that it waits.
    let lease_name = format!("{RELEASE}-controller");
    let holder = s
        .until(
            "a Lease holder",
            Duration::from_secs(30),
            async || match leases.get_opt(&lease_name).await {
                Ok(Some(l)) => match l.spec.and_then(|s| s.holder_identity) {
                    Some(h) if names.contains(&h) => Poll::Done(h),
                    other => Poll::Wait(format!("holder {other:?}, pods {names:?}")),
                },
                other => Poll::Wait(format!("{other:?}")),
            },
        )
        .await;
    let lease = leases.get(&lease_name).await.unwrap();
    let managers: Vec<String> = lease
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect();
    ensure!(
        s,
        managers.iter().any(|m| m == "sitecache-controller"),
        "the Lease was not written by the controller: {managers:?}"
    );
    for pod in &controllers {
        let log = s.log(pod, "controller").await;
        let leads = log.contains("\"message\":\"leading\"");
        let waits = log.contains("\"message\":\"waiting to lead\"");
        let is_holder = pod.name_any() == holder;
        if leads != is_holder || !waits {
            s.fail(&format!(
                "pod {} (holder: {is_holder}) leads: {leads}, waited: {waits}",
                pod.name_any()
            ))
            .await;
        }
    }
    s.done("the chart's install");
}
