//! `kubectl sitecache migrate-storage`: writes every SiteCache back in the CRD's storage version,
//! then records that version as the only one stored (the CRD's `status.storedVersions`), so that a
//! later release may stop serving the older one. The step between two releases that
//! `docs/api-versions.md` describes; the API server itself refuses to drop a version from the
//! CRD while it is still recorded as stored.

use std::io::Write;

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::json;

use super::Kube;
use crate::api::GROUP;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Say what would be written, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// SiteCaches read per page.
const PAGE: u32 = 500;

pub async fn run(kube: &Kube, args: &MigrateArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(kube.client.clone());
    let name = crate::api::crd().name_any();
    let crd = crds
        .get(&name)
        .await
        .with_context(|| format!("reading CustomResourceDefinition {name}"))?;
    let storage = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .map(|v| v.name.clone())
        .with_context(|| format!("CustomResourceDefinition {name} has no storage version"))?;
    let stored = crd
        .status
        .as_ref()
        .and_then(|s| s.stored_versions.clone())
        .unwrap_or_default();
    writeln!(
        out,
        "SiteCaches are stored in {storage}; recorded as stored: {}.",
        stored.join(", ")
    )?;
    if stored == [storage.as_str()] {
        writeln!(out, "Nothing to migrate.")?;
        return Ok(());
    }
    let gvk = GroupVersionKind::gvk(GROUP, &storage, "SiteCache");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "sitecaches");
    let all: Api<DynamicObject> = Api::all_with(kube.client.clone(), &resource);
    let mut rewritten = 0u64;
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = all.list(&params).await.context("listing SiteCaches")?;
        for sc in page.items {
            if !args.dry_run {
                rewrite(&kube.client, &resource, sc).await?;
            }
            rewritten += 1;
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    if args.dry_run {
        writeln!(
            out,
            "Would write {rewritten} SiteCaches in {storage}, then record {storage} alone as stored."
        )?;
        return Ok(());
    }
    // Only once every object is written in the storage version.
    crds.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "storedVersions": [storage] } })),
    )
    .await
    .with_context(|| format!("recording {storage} as the only stored version"))?;
    writeln!(
        out,
        "Wrote {rewritten} SiteCaches in {storage}; recorded as stored: {storage}."
    )?;
    Ok(())
}

/// Writes `sc` back unchanged: the API server stores what it writes in the storage version. A
/// conflict (someone wrote it meanwhile, in the storage version too) is read again and retried;
/// one deleted meanwhile is done.
async fn rewrite(
    client: &kube::Client,
    resource: &ApiResource,
    mut sc: DynamicObject,
) -> anyhow::Result<()> {
    let ns = sc.namespace().unwrap_or_default();
    let name = sc.name_any();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, resource);
    loop {
        match api.replace(&name, &PostParams::default(), &sc).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => match api.get_opt(&name).await? {
                Some(fresh) => sc = fresh,
                None => return Ok(()),
            },
            Err(e) => {
                return Err(e).with_context(|| format!("writing SiteCache {ns}/{name}"));
            }
        }
    }
}
