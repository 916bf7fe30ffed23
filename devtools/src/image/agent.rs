//! The sitecache image, built without an image builder: the `sitecache` binary laid out as the
//! final stage of the Dockerfile lays it out (user, entrypoint, command, where the binary goes),
//! over a base like that stage's distroless one, with the shared libraries the binary loads. The
//! real node's agent image ([`crate::node::images`]) and a release's image
//! ([`crate::dist`]) are both made here, so that what the tests run is what a release ships.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::oci::{ImageConfig, Layer};

/// The uid of distroless' `nonroot`, the image's user.
pub const NONROOT_UID: u64 = 65532;

/// The image of `sitecache_bin` as the final stage of `dockerfile` makes it: its one layer and
/// its config (the stage's user, entrypoint, command, environment and working directory; `PATH`
/// and `SSL_CERT_FILE` as distroless sets them).
pub fn layer_and_config(sitecache_bin: &Path, dockerfile: &Path) -> Result<(Layer, ImageConfig)> {
    let mut layer = distroless_like_base()?;
    let stage = DockerfileStage::parse(
        &std::fs::read_to_string(dockerfile)
            .with_context(|| format!("read {}", dockerfile.display()))?,
    )?;
    for (source, dest) in &stage.copies {
        if Path::new(source).file_name() != Some("sitecache".as_ref()) {
            bail!(
                "{}: COPY {source} {dest}: only the sitecache binary is known to the image builder",
                dockerfile.display()
            );
        }
        layer.file(dest, sitecache_bin, 0o755);
    }
    add_libraries(&mut layer, sitecache_bin)?;
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_owned(),
    ];
    env.extend(stage.env.iter().cloned());
    let config = ImageConfig {
        user: stage.user.clone(),
        entrypoint: stage.entrypoint.clone(),
        cmd: stage.cmd.clone(),
        env,
        working_dir: stage
            .workdir
            .clone()
            .unwrap_or_else(|| "/home/nonroot".into()),
        ..Default::default()
    };
    Ok((layer, config))
}

/// Where distroless (and Debian) keep the CA certificates, which `SSL_CERT_FILE` names: the
/// agent image has this machine's.
pub const CA_CERTIFICATES: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What the agent image has besides the binary, like distroless' `cc-debian12:nonroot`: the
/// users (root, nobody, nonroot 65532), a home for nonroot, `/tmp` and the CA certificates, as
/// the production image has them (without, `http` endpoints work and `https` ones cannot be
/// verified: `src/storage/tls.rs`). glibc comes with the binary's libraries.
fn distroless_like_base() -> Result<Layer> {
    if !Path::new(CA_CERTIFICATES).is_file() {
        bail!("{CA_CERTIFICATES} is missing (Debian's ca-certificates package)");
    }
    let mut l = Layer::new();
    l.file(CA_CERTIFICATES, Path::new(CA_CERTIFICATES), 0o644);
    l.bytes(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        0o644,
    )
    .bytes(
        "/etc/group",
        b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n",
        0o644,
    )
    .dir("/home/nonroot", 0o700, (NONROOT_UID, NONROOT_UID))
    .dir("/root", 0o700, (0, 0))
    .dir("/tmp", 0o1777, (0, 0));
    Ok(l)
}

/// Adds the shared libraries `binary` loads (as `ldd` resolves them on this machine, the loader
/// included) at the paths `ldd` gives.
pub fn add_libraries(layer: &mut Layer, binary: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") {
            return Ok(());
        }
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for path in ldd_paths(&text) {
        let real = Path::new(&path)
            .canonicalize()
            .with_context(|| format!("resolve {path}"))?;
        if !layer.contains(&path) {
            layer.file(&path, &real, 0o755);
        }
    }
    Ok(())
}

/// The library paths of `ldd`'s output (`name => /path (addr)` and `/path (addr)`; the vDSO has
/// none).
fn ldd_paths(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// The final stage of a Dockerfile, as far as an image's contents and config go.
#[derive(Debug, Default, PartialEq)]
pub struct DockerfileStage {
    /// The stage's `FROM`.
    pub from: String,
    /// `COPY` sources and destinations (flags such as `--from` dropped).
    pub copies: Vec<(String, String)>,
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

impl DockerfileStage {
    /// Parses the last stage of `text` (continuation lines joined, comments skipped). Only the
    /// instructions of a simple final stage are understood: FROM, COPY, USER, ENTRYPOINT and
    /// CMD in their JSON form, ENV, WORKDIR; anything else there is an error, so that the local
    /// image cannot silently differ from the Dockerfile's.
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('#') && current.is_empty() {
                continue;
            }
            if let Some(head) = t.strip_suffix('\\') {
                current.push_str(head);
                current.push(' ');
                continue;
            }
            current.push_str(t);
            if !current.trim().is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            current.clear();
        }
        let last_from = lines
            .iter()
            .rposition(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
            })
            .context("no FROM in the Dockerfile")?;
        let mut stage = Self::default();
        for line in &lines[last_from..] {
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word.to_ascii_uppercase().as_str() {
                "FROM" => stage.from = rest.split_whitespace().next().unwrap_or("").to_owned(),
                "COPY" => {
                    let args: Vec<&str> = rest
                        .split_whitespace()
                        .filter(|a| !a.starts_with("--"))
                        .collect();
                    let Some((dest, sources)) = args.split_last() else {
                        bail!("COPY without arguments: {line}");
                    };
                    for s in sources {
                        stage.copies.push(((*s).to_owned(), (*dest).to_owned()));
                    }
                }
                "USER" => stage.user = rest.to_owned(),
                "ENTRYPOINT" => {
                    stage.entrypoint = serde_json::from_str(rest)
                        .with_context(|| format!("ENTRYPOINT is not a JSON array: {line}"))?
                }
                "CMD" => {
                    stage.cmd = serde_json::from_str(rest)
                        .with_context(|| format!("CMD is not a JSON array: {line}"))?
                }
                // `ENV K=V` (one pair) or the older `ENV K V`.
                "ENV" if rest.contains('=') => stage.env.push(rest.to_owned()),
                "ENV" => stage.env.push(rest.replacen(' ', "=", 1)),
                "WORKDIR" => stage.workdir = Some(rest.to_owned()),
                other => bail!("the local agent image does not know {other} (in {line})"),
            }
        }
        Ok(stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_dockerfile_final_stage() {
        let text = include_str!("../../../Dockerfile");
        let stage = DockerfileStage::parse(text).unwrap();
        assert_eq!(stage.user, "65532:65532");
        assert_eq!(stage.entrypoint, ["/usr/local/bin/sitecache"]);
        assert_eq!(stage.cmd, ["controller"]);
        assert_eq!(
            stage.copies,
            [(
                "/out/sitecache".to_owned(),
                "/usr/local/bin/sitecache".to_owned()
            )]
        );
    }

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(text),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
