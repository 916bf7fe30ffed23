//! A local S3-compatible server on loopback, with its data in a directory: MinIO, or SeaweedFS
//! (a second implementation, so that no MinIO-only behaviour hides: stores differ in the optional
//! calls they answer and in how they list uploads).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::assets::Asset;
use crate::process::ManagedProcess;

const ACCESS_KEY: &str = "sitecache-test";
const SECRET_KEY: &str = "sitecache-test-secret";
const REGION: &str = "us-east-1";

/// Which S3-compatible server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Minio,
    Seaweedfs,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::Minio => "minio",
            Store::Seaweedfs => "seaweedfs",
        }
    }
}

/// A running S3-compatible server. Dropping it stops the server.
pub struct S3Server {
    store: Store,
    dir: PathBuf,
    port: u16,
    /// SeaweedFS' other listeners (master, volume and filer, HTTP and gRPC, and the S3
    /// gateway's gRPC), kept across restarts.
    inner_ports: Vec<u16>,
    process: Option<ManagedProcess>,
    /// Served over TLS with this certificate, which this CA (PEM) issued.
    tls: Option<(crate::ServerCert, String)>,
}

impl S3Server {
    /// Starts MinIO with its data and log in `dir` (emptied first) on a free port.
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_store(Store::Minio, dir).await
    }

    /// Starts `store` with its data and log in `dir` (emptied first) on free ports, with one
    /// user that may do everything (the credentials of [`aws_env`](Self::aws_env)).
    pub async fn start_store(store: Store, dir: &Path) -> Result<Self> {
        Self::start_with(store, dir, None).await
    }

    /// Starts MinIO as [`start`](Self::start) does, serving TLS only, with `cert` (issued by the
    /// CA whose certificate is `ca_pem`, which [`client`](Self::client) trusts): a company's
    /// store behind its private CA. The certificate must name 127.0.0.1.
    pub async fn start_tls(dir: &Path, cert: crate::ServerCert, ca_pem: &str) -> Result<Self> {
        Self::start_with(Store::Minio, dir, Some((cert, ca_pem.to_owned()))).await
    }

    async fn start_with(
        store: Store,
        dir: &Path,
        tls: Option<(crate::ServerCert, String)>,
    ) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let mut last_err = None;
        for _attempt in 0..3 {
            let mut server = Self {
                store,
                dir: dir.to_owned(),
                port: crate::free_port()?,
                inner_ports: match store {
                    Store::Minio => Vec::new(),
                    Store::Seaweedfs => (0..7)
                        .map(|_| crate::free_port())
                        .collect::<std::io::Result<_>>()?,
                },
                process: None,
                tls: tls.clone(),
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("{} did not start", store.name())))
    }

    /// Which server this is.
    pub fn store(&self) -> Store {
        self.store
    }

    async fn launch(&mut self) -> Result<()> {
        let cmd = match self.store {
            Store::Minio => self.minio()?,
            Store::Seaweedfs => self.seaweedfs()?,
        };
        let name = self.store.name();
        let mut process = ManagedProcess::spawn(name, cmd, &self.log())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if process.exited().is_some() {
                return Err(process.failure("exited during start-up"));
            }
            if self.ready().await {
                self.process = Some(process);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(process.failure("not ready within 60s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn minio(&self) -> Result<Command> {
        let mut cmd = Command::new(Asset::Minio.path()?);
        cmd.args([
            "server",
            "--quiet",
            "--address",
            &format!("127.0.0.1:{}", self.port),
            "--console-address",
            &format!("127.0.0.1:{}", crate::free_port()?),
        ])
        .arg(self.dir.join("data"))
        .env("MINIO_ROOT_USER", ACCESS_KEY)
        .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
        .env("MINIO_BROWSER", "off")
        .env("MINIO_UPDATE", "off")
        .env("MINIO_CALLHOME_ENABLE", "off")
        .env("MINIO_REGION", REGION);
        if let Some((cert, _)) = &self.tls {
            // MinIO serves TLS, and only TLS, when its certs directory holds these two files.
            let certs = self.dir.join("certs");
            std::fs::create_dir_all(&certs)?;
            std::fs::write(certs.join("public.crt"), &cert.cert)?;
            std::fs::write(certs.join("private.key"), &cert.key)?;
            cmd.arg("--certs-dir").arg(&certs);
        }
        Ok(cmd)
    }

    /// `weed server`: a master, a volume server, a filer and the S3 gateway in one process,
    /// every listener on loopback, nothing else (no Iceberg or Lance catalogue, no telemetry).
    fn seaweedfs(&self) -> Result<Command> {
        let identities = serde_json::json!({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]});
        let config = self.dir.join("s3.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&identities)?)?;
        // Each bucket is a collection of its own, which the master grows seven volumes at a
        // time by default: tens of test buckets would run out of volumes ("no free volumes
        // left"). One at a time (read from master.toml in the working directory), and as many
        // as the disk holds.
        std::fs::write(
            self.dir.join("master.toml"),
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n",
        )?;
        let [
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3_grpc,
        ] = <[u16; 7]>::try_from(self.inner_ports.as_slice())
            .map_err(|_| anyhow::anyhow!("SeaweedFS needs seven inner ports"))?;
        let mut cmd = Command::new(Asset::Seaweedfs.path()?);
        cmd.arg("server")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            .args(["-master.telemetry=false", "-master.volumeSizeLimitMB=64"])
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .arg("-volume.max=0")
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg("-s3")
            .arg(format!("-s3.port={}", self.port))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", config.display()))
            .current_dir(&self.dir);
        Ok(cmd)
    }

    /// Whether the server answers S3 requests: MinIO's liveness probe; for SeaweedFS, whose
    /// gateway answers before its filer and volume server have met, a write that succeeds.
    async fn ready(&self) -> bool {
        match self.store {
            Store::Minio if self.tls.is_some() => self.client().list_buckets().send().await.is_ok(),
            Store::Minio => http_ok(self.port, "/minio/health/live").await,
            Store::Seaweedfs => {
                if !http_ok(self.port, "/healthz").await {
                    return false;
                }
                let client = self.client();
                let bucket = "sitecache-ready";
                let _ = client.create_bucket().bucket(bucket).send().await;
                client
                    .put_object()
                    .bucket(bucket)
                    .key("ready")
                    .body(b"ready".to_vec().into())
                    .send()
                    .await
                    .is_ok()
            }
        }
    }

    /// Stops the server (its data stays), as an outage would.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch().await
    }

    /// The process, while it runs (to pause it with `SIGSTOP`, for example).
    pub fn process(&self) -> Option<&ManagedProcess> {
        self.process.as_ref()
    }

    /// An error with the end of its log if the server has exited (or was stopped).
    pub fn check_running(&mut self) -> Result<()> {
        match &mut self.process {
            None => Err(anyhow::anyhow!("{} is stopped", self.store.name())),
            Some(p) => match p.exited() {
                Some(_) => Err(p.failure("exited")),
                None => Ok(()),
            },
        }
    }

    /// The endpoint URL (`http://127.0.0.1:<port>`, `https://` when it serves TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.store.name()))
    }

    /// The standard AWS environment that points a process at this server: credentials, region
    /// and `AWS_ENDPOINT_URL_S3`.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL_S3", self.endpoint()),
            // Keep the SDK away from instance metadata and shared config files.
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_CONFIG_FILE", "/dev/null".to_owned()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_owned()),
        ]
    }

    /// Creates (or replaces) the policy `name` (an IAM policy document, as MinIO reads them).
    pub fn put_policy(&self, name: &str, policy: &serde_json::Value) -> Result<()> {
        let file = self.dir.join(format!("policy-{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(policy)?)?;
        self.admin(&["put-policy", name, &file.to_string_lossy()])
    }

    /// Creates the user `user` with the secret key `secret` and attaches policy `policy` to it:
    /// a client with only the rights that policy grants.
    pub fn add_user(&self, user: &str, secret: &str, policy: &str) -> Result<()> {
        self.admin(&["add-user", user, secret, policy])
    }

    /// The environment of a snapshot pod run by the local job runner: [`aws_env`](Self::aws_env)
    /// (as a pod identity webhook would inject it) and no colours in its logs.
    pub fn job_env(&self) -> Vec<(String, String)> {
        self.aws_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain([("NO_COLOR".to_owned(), "1".to_owned())])
            .collect()
    }

    /// [`aws_env`](Self::aws_env) with the credentials of `user` instead of the root user's.
    pub fn aws_env_as(&self, user: &str, secret: &str) -> Vec<(&'static str, String)> {
        let mut env = self.aws_env();
        for (k, v) in &mut env {
            match *k {
                "AWS_ACCESS_KEY_ID" => *v = user.to_owned(),
                "AWS_SECRET_ACCESS_KEY" => *v = secret.to_owned(),
                _ => {}
            }
        }
        env
    }

    fn admin(&self, args: &[&str]) -> Result<()> {
        anyhow::ensure!(
            self.store == Store::Minio,
            "users and policies are set up on MinIO only (this is {})",
            self.store.name()
        );
        let out = Command::new(Asset::MinioAdmin.path()?)
            .arg(format!("127.0.0.1:{}", self.port))
            .args(args)
            .env("MINIO_ROOT_USER", ACCESS_KEY)
            .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
            .output()
            .context("run minio-admin")?;
        if !out.status.success() {
            anyhow::bail!(
                "minio-admin {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// An S3 client for this server (path-style addressing, static credentials; trusting the
    /// test CA when it serves TLS).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let mut config = aws_sdk_s3::Config::builder();
        if let Some((_, ca)) = &self.tls {
            use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
            let context = TlsContext::builder()
                .with_trust_store(
                    TrustStore::empty()
                        .with_native_roots(false)
                        .with_pem_certificate(ca.as_bytes()),
                )
                .build()
                .expect("a TLS context");
            config = config.http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::AwsLc,
                    ))
                    .tls_context(context)
                    .build_https(),
            );
        }
        let config = config
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                ACCESS_KEY,
                SECRET_KEY,
                None,
                None,
                "sitecache-devtools",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates a bucket with a unique name and returns the name.
    pub async fn create_bucket(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_name(prefix);
        self.client()
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .with_context(|| format!("create bucket {name}"))?;
        Ok(name)
    }

    /// The whole content of an object.
    pub async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        let out = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("get s3://{bucket}/{key}"))?;
        Ok(out.body.collect().await?.into_bytes().to_vec())
    }

    /// Every key in `bucket` under `prefix`, sorted.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let client = self.client();
        let mut keys = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.with_context(|| format!("list s3://{bucket}/{prefix}"))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        Ok(keys)
    }
}

/// Whether `GET path` answers 200.
async fn http_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
}
