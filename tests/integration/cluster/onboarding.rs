//! Onboarding a namespace: no snapshot ServiceAccount made by hand or by the chart. The
//! controller makes it when the first Job there is about to run, the Job controller's pods run
//! as it, and a user's own account is left as the user made it.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::*;

const ACCOUNT: &str = "sitecache-snapshot";

impl Scenario<'_> {
    fn accounts(&self) -> Api<ServiceAccount> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn account(&self) -> Option<ServiceAccount> {
        match self.accounts().get_opt(ACCOUNT).await {
            Ok(sa) => sa,
            Err(e) => {
                self.fail(&format!("get ServiceAccount {ACCOUNT}: {e}"))
                    .await
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_without_the_snapshot_account_gets_one_and_snapshots() {
    let s = Scenario::new("onboard").await;
    let name = "shop";
    ensure!(
        s,
        s.account().await.is_none(),
        "the chart made no account here"
    );
    s.create_quick_site(name).await;
    s.wait_promoted(name, 1, Duration::from_secs(180)).await;
    let made = s.account().await.unwrap();
    ensure_eq!(
        s,
        made.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("sitecache")
    );
    ensure_eq!(s, made.automount_service_account_token, Some(false));
    // The Job controller's pod ran as it, with no API token (the agents need none).
    let pod = s.job_pod(name, 1).await;
    let spec = pod.spec.clone().unwrap();
    ensure_eq!(s, spec.service_account_name.as_deref(), Some(ACCOUNT));
    let tokens: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.projected.is_some())
        .map(|v| v.name.clone())
        .collect();
    ensure!(s, tokens.is_empty(), "token volumes: {tokens:?}");

    // Deleted (by hand, or with a namespace made again): the next Job's pod is refused until
    // the controller, told by the Job controller's FailedCreate, makes it again.
    if let Err(e) = s.accounts().delete(ACCOUNT, &DeleteParams::default()).await {
        s.fail(&format!("delete ServiceAccount {ACCOUNT}: {e}"))
            .await;
    }
    s.request_snapshot(name, "after-the-account-went", json!({}))
        .await;
    s.wait_promoted(name, 2, Duration::from_secs(180)).await;
    let again = s.account().await.unwrap();
    ensure!(s, again.uid() != made.uid(), "a new account: {again:?}");
    s.done("onboarding a namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_snapshot_account_is_left_as_it_is() {
    let s = Scenario::new("byo").await;
    let name = "blog";
    let users: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": ACCOUNT, "labels": {"team": "blog"},
                     "annotations": {"example.com/role": "the-users"}},
    }))
    .unwrap();
    let users = match s.accounts().create(&PostParams::default(), &users).await {
        Ok(sa) => sa,
        Err(e) => {
            s.fail(&format!("create ServiceAccount {ACCOUNT}: {e}"))
                .await
        }
    };
    s.create_quick_site(name).await;
    s.wait_promoted(name, 1, Duration::from_secs(180)).await;
    let pod = s.job_pod(name, 1).await;
    ensure_eq!(
        s,
        pod.spec.as_ref().unwrap().service_account_name.as_deref(),
        Some(ACCOUNT)
    );
    let after = s.account().await.unwrap();
    ensure_eq!(s, after.resource_version(), users.resource_version());
    ensure_eq!(s, after.uid(), users.uid());
    ensure!(
        s,
        !after.labels().contains_key("app.kubernetes.io/managed-by"),
        "{after:?}"
    );
    s.done("a user's own snapshot account");
}
