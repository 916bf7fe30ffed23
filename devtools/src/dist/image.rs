//! The release's image, `sitecache-image-<version>.oci.tar`: the binary laid out as the
//! Dockerfile's final stage lays it out ([`crate::image::agent`], the builder the real node's
//! agent image comes from too), with gzip-compressed layers, as an OCI image layout archive whose
//! one manifest is tagged `<version>` (`skopeo copy oci-archive:…:<version>`, `ctr images
//! import`, `crane push`). Its manifest carries the `org.opencontainers.image.*` annotations and
//! its config the same labels; its `created` is the commit's time, so the digest depends on the
//! commit and the binary only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{LICENSE, Options, Release, SOURCE};
use crate::image::{agent, oci};

/// The image archive's name.
pub fn archive_name(version: &str) -> String {
    format!("sitecache-image-{version}.oci.tar")
}

/// The annotations of the release's image (OCI image spec, "Pre-Defined Annotation Keys").
pub fn annotations(release: &Release) -> BTreeMap<String, String> {
    [
        ("org.opencontainers.image.title", "sitecache".to_owned()),
        (
            "org.opencontainers.image.description",
            "The sitecache controller and its agent (snapshot, restore): keeps the Deno module \
             caches of sites in S3-compatible object storage"
                .to_owned(),
        ),
        ("org.opencontainers.image.version", release.version.clone()),
        (
            "org.opencontainers.image.revision",
            release.revision.clone(),
        ),
        ("org.opencontainers.image.source", SOURCE.to_owned()),
        ("org.opencontainers.image.url", SOURCE.to_owned()),
        (
            "org.opencontainers.image.documentation",
            format!("{SOURCE}/tree/{}/docs", release.tag()),
        ),
        ("org.opencontainers.image.licenses", LICENSE.to_owned()),
        ("org.opencontainers.image.vendor", "sitecache".to_owned()),
        (oci::CREATED, release.created.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Writes the image archive into `opts.out` (layers staged in `work`).
pub fn build(opts: &Options, release: &Release, work: &Path) -> Result<PathBuf> {
    let (layer, mut config) =
        agent::layer_and_config(&opts.sitecache_bin, &opts.repo.join("Dockerfile"))?;
    let annotations = annotations(release);
    config.labels = annotations.clone();
    let out = opts.out.join(archive_name(&release.version));
    oci::write_images(
        &out,
        &[oci::ImageSpec {
            reference: &release.image(),
            layers: vec![&layer],
            config: &config,
            annotations,
            gzip: true,
        }],
        work,
    )?;
    Ok(out)
}
