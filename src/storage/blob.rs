//! The bucket: one interface over the local directory, S3/R2 and memory (`object_store`),
//! plus how object URLs are made. Large objects go through a spool file on local disk, so
//! memory does not grow with object size on upload, ingest or serving.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetResult, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;
use url::Url;

use super::keys::ObjectSpec;
use crate::config::{Config, S3Config, UrlMode};

/// Objects up to this size are written in one request; larger ones in parts.
const SINGLE_PUT_MAX: u64 = 8 * 1024 * 1024;
/// S3's smallest part (except the last).
const PART_SIZE: usize = 5 * 1024 * 1024;
const READ_CHUNK: usize = 256 * 1024;
/// Spooled files written at once. Each holds up to about 10 MiB while it is written (the
/// whole file up to `SINGLE_PUT_MAX`, two parts in flight above), so a burst of large
/// results (100 of 10 MB arriving together) stays within about 8 of those instead of 100;
/// the others wait on disk, already downloaded.
const LARGE_WRITES_AT_ONCE: usize = 8;

pub use crate::spool::{SPOOL_IN_MEMORY_MAX, SpoolWriter, Spooled};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    #[error("bucket error: {0}")]
    Store(#[from] object_store::Error),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot prepare the bucket directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("presigned URLs need an S3-compatible bucket")]
    NoSigner,
}

impl BlobError {
    /// The storage fault behind this error (disk full, read-only), if that is what it is.
    pub fn fault(&self) -> Option<super::StorageFault> {
        match self {
            Self::Store(e) => super::StorageFault::in_chain(e),
            Self::Io(e) | Self::Directory { source: e, .. } => super::StorageFault::of_io(e),
            _ => None,
        }
    }
}

/// What a create-only write found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Written,
    /// The key was already there: an earlier attempt stored it. Not an error.
    AlreadyExisted,
}

/// How a browser reaches an object.
#[derive(Clone, Debug)]
enum Urls {
    /// `R2_PUBLIC_BASE_URL`: `{base}/{key}`.
    Public(Url),
    /// `{server}/files/{key}`, streamed or redirected by darkroom.
    Server(Url),
}

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Only S3-compatible stores can sign URLs.
    signer: Option<Arc<AmazonS3>>,
    /// The local directory keeps no metadata; content type comes from the key there.
    keeps_attributes: bool,
    urls: Urls,
    url_mode: UrlMode,
    presign_ttl: Duration,
    description: String,
    /// When API keys are on: the key that signs `/files/{key}` URLs (see [`Self::url`]).
    url_signing_key: Option<Arc<[u8]>>,
    /// Turns for writing a spooled file ([`Self::put_file`]), shared by every clone.
    large_writes: Arc<tokio::sync::Semaphore>,
}

/// The query parameter that carries a `/files` URL's signature.
const SIGNATURE_PARAM: &str = "sig";

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl BlobStore {
    /// Builds the store the configuration names. `server_base` is this server's public URL.
    pub fn from_config(config: &Config, server_base: Url) -> Result<Self, BlobError> {
        let mut blobs = match &config.storage.s3 {
            Some(s3) => Self::s3(s3, config.storage.request_timeout_secs)?,
            None => {
                let dir = config.bucket_dir();
                std::fs::create_dir_all(&dir).map_err(|source| BlobError::Directory {
                    path: dir.display().to_string(),
                    source,
                })?;
                let local = LocalFileSystem::new_with_prefix(&dir)?;
                Self::with_store(
                    Arc::new(local),
                    false,
                    format!("local directory {}", dir.display()),
                )
            }
        };
        blobs.urls = match &config.storage.public_base_url {
            Some(base) => Urls::Public(base.clone()),
            None => Urls::Server(server_base),
        };
        blobs.url_mode = config.storage.url_mode;
        blobs.presign_ttl = config.storage.presign_ttl_secs;
        if blobs.url_mode == UrlMode::Presigned && blobs.signer.is_none() {
            return Err(BlobError::NoSigner);
        }
        Ok(blobs)
    }

    fn with_store(
        store: Arc<dyn ObjectStore>,
        keeps_attributes: bool,
        description: String,
    ) -> Self {
        Self {
            store,
            signer: None,
            keeps_attributes,
            urls: Urls::Server(Url::parse("http://127.0.0.1/").expect("static URL")),
            url_mode: UrlMode::Proxy,
            presign_ttl: Duration::from_secs(3600),
            description,
            url_signing_key: None,
            large_writes: Arc::new(tokio::sync::Semaphore::new(LARGE_WRITES_AT_ONCE)),
        }
    }

    /// `request_timeout`: how long one request may take, a part of an upload included
    /// (`storage.request_timeout_secs`). A bucket that takes a connection and never
    /// answers holds a task no longer than this before it waits and tries again.
    fn s3(s3: &S3Config, request_timeout: Duration) -> Result<Self, BlobError> {
        let client = ClientOptions::new()
            .with_allow_http(s3.endpoint.scheme() == "http")
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(request_timeout);
        // Retries are bounded so a dead endpoint fails the start-up probe in seconds.
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
        };
        let store = Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(s3.endpoint.as_str().trim_end_matches('/'))
                .with_region(&s3.region)
                .with_bucket_name(&s3.bucket)
                .with_access_key_id(&s3.access_key_id)
                .with_secret_access_key(s3.secret_access_key.expose())
                .with_virtual_hosted_style_request(false)
                .with_client_options(client)
                .with_retry(retry)
                .build()?,
        );
        let mut blobs = Self::with_store(
            store.clone(),
            true,
            format!("S3 bucket {} at {}", s3.bucket, s3.endpoint),
        );
        blobs.signer = Some(store);
        Ok(blobs)
    }

    /// An in-memory bucket, for tests.
    pub fn memory(server_base: Url) -> Self {
        let mut blobs = Self::with_store(
            Arc::new(InMemory::new()),
            true,
            "in-memory bucket".to_owned(),
        );
        blobs.urls = Urls::Server(server_base);
        blobs
    }

    /// A local directory bucket, for tests and tools.
    pub fn local(dir: &std::path::Path, server_base: Url) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        let mut blobs = Self::with_store(
            Arc::new(LocalFileSystem::new_with_prefix(dir)?),
            false,
            format!("local directory {}", dir.display()),
        );
        blobs.urls = Urls::Server(server_base);
        Ok(blobs)
    }

    /// An S3-compatible bucket, for tests and tools.
    pub fn s3_bucket(s3: &S3Config, server_base: Url) -> Result<Self, BlobError> {
        let mut blobs = Self::s3(s3, Duration::from_secs(120))?;
        blobs.urls = Urls::Server(server_base);
        Ok(blobs)
    }

    /// Which backend and bucket, for the start-up log (never a secret).
    pub fn describe(&self) -> &str {
        &self.description
    }

    pub fn is_s3(&self) -> bool {
        self.signer.is_some()
    }

    pub fn has_public_base(&self) -> bool {
        matches!(self.urls, Urls::Public(_))
    }

    pub fn url_mode(&self) -> UrlMode {
        self.url_mode
    }

    /// Signs every `/files/{key}` URL from now on with `secret`, and makes `/files` serve
    /// only correctly signed URLs (see [`Self::file_access_ok`]). Used when API keys are on:
    /// a browser's `<img>` sends no `Authorization` header, so the URL itself is the proof
    /// that its holder was given it, and it is only ever given to the owner of the object.
    /// A bucket with a public base URL is public by definition and is not affected.
    pub fn sign_file_urls(&mut self, secret: &[u8]) {
        self.url_signing_key = Some(Arc::from(secret));
    }

    /// Whether `/files` URLs carry signatures.
    pub fn signs_file_urls(&self) -> bool {
        self.url_signing_key.is_some() && matches!(self.urls, Urls::Server(_))
    }

    /// HMAC-SHA256 of the key, 128 bits, base64url: unforgeable without the secret, and
    /// stable, so a URL once given keeps working (until the secret is rotated).
    fn file_signature(&self, key: &str) -> Option<String> {
        use base64::Engine as _;
        use hmac::{Hmac, KeyInit, Mac};
        let secret = self.url_signing_key.as_ref()?;
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).ok()?;
        mac.update(b"files:");
        mac.update(key.as_bytes());
        let tag = mac.finalize().into_bytes();
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..16]))
    }

    /// Whether a request for `/files/{key}` with signature `presented` may be served:
    /// always when URLs are not signed; otherwise only with the exact signature, compared
    /// in constant time over its full length.
    pub fn file_access_ok(&self, key: &str, presented: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(expected) = self.file_signature(key) else {
            return true;
        };
        let Some(presented) = presented else {
            return false;
        };
        presented.len() == expected.len()
            && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
    }

    /// The stable URL at which a browser opens `key` (signed when [`Self::sign_file_urls`]
    /// is on).
    pub fn url(&self, key: &str) -> String {
        match &self.urls {
            Urls::Public(base) => format!("{}/{key}", base.as_str().trim_end_matches('/')),
            Urls::Server(base) => {
                let base = base.as_str().trim_end_matches('/');
                match self.file_signature(key) {
                    Some(sig) => format!("{base}/files/{key}?{SIGNATURE_PARAM}={sig}"),
                    None => format!("{base}/files/{key}"),
                }
            }
        }
    }

    /// The key behind one of our own object URLs, if `url` is one (signed or not: whether
    /// the caller may use that object is the caller's check).
    pub fn key_for_url(&self, url: &str) -> Option<String> {
        let prefix = match &self.urls {
            Urls::Public(base) => format!("{}/", base.as_str().trim_end_matches('/')),
            Urls::Server(base) => format!("{}/files/", base.as_str().trim_end_matches('/')),
        };
        let rest = url.strip_prefix(&prefix)?;
        let key = match rest.split_once('?') {
            Some((key, query))
                if matches!(self.urls, Urls::Server(_))
                    && query
                        .strip_prefix(SIGNATURE_PARAM)
                        .is_some_and(|q| q.starts_with('=') && !q.contains(['&', '#'])) =>
            {
                key
            }
            Some(_) => return None,
            None => rest,
        };
        (!key.is_empty() && !key.contains('#')).then(|| key.to_owned())
    }

    /// A URL that opens `key` for `ttl` without credentials (S3-compatible buckets only).
    pub async fn presigned_get(&self, key: &str, ttl: Duration) -> Result<Url, BlobError> {
        let signer = self.signer.as_ref().ok_or(BlobError::NoSigner)?;
        Ok(signer
            .signed_url(reqwest::Method::GET, &path(key)?, ttl)
            .await?)
    }

    /// The lifetime of presigned URLs handed to browsers.
    pub fn presign_ttl(&self) -> Duration {
        self.presign_ttl
    }

    fn attributes(&self, spec: &ObjectSpec) -> Attributes {
        let mut attributes = Attributes::new();
        if self.keeps_attributes {
            attributes.insert(Attribute::ContentType, spec.content_type.into());
            attributes.insert(Attribute::CacheControl, spec.cache_control.into());
        }
        attributes
    }

    fn options(&self, spec: &ObjectSpec, mode: PutMode) -> PutOptions {
        PutOptions {
            mode,
            attributes: self.attributes(spec),
            ..PutOptions::default()
        }
    }

    /// Writes or replaces the object.
    pub async fn put(&self, spec: &ObjectSpec, bytes: Bytes) -> Result<(), BlobError> {
        let path = path(&spec.key)?;
        self.store
            .put_opts(
                &path,
                PutPayload::from_bytes(bytes),
                self.options(spec, PutMode::Overwrite),
            )
            .await?;
        Ok(())
    }

    /// Writes the object only if the key is free; an existing object is left as it is.
    pub async fn put_create(&self, spec: &ObjectSpec, bytes: Bytes) -> Result<Created, BlobError> {
        let path = path(&spec.key)?;
        match self
            .store
            .put_opts(
                &path,
                PutPayload::from_bytes(bytes),
                self.options(spec, PutMode::Create),
            )
            .await
        {
            Ok(_) => Ok(Created::Written),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExisted),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a spooled file. Small files go in one request (create-only when `create`);
    /// large ones stream in parts, after a check that the key is free when `create`. At
    /// most [`LARGE_WRITES_AT_ONCE`] at a time (the memory each holds while written).
    pub async fn put_file(
        &self,
        spec: &ObjectSpec,
        file: &std::path::Path,
        create: bool,
    ) -> Result<Created, BlobError> {
        // Never closed: a permit always comes.
        let _turn = self.large_writes.acquire().await.ok();
        let size = tokio::fs::metadata(file).await?.len();
        if size <= SINGLE_PUT_MAX {
            let bytes = Bytes::from(tokio::fs::read(file).await?);
            return if create {
                self.put_create(spec, bytes).await
            } else {
                self.put(spec, bytes).await.map(|()| Created::Written)
            };
        }
        if create && self.exists(&spec.key).await? {
            return Ok(Created::AlreadyExisted);
        }
        let options = PutMultipartOptions {
            attributes: self.attributes(spec),
            ..PutMultipartOptions::default()
        };
        let upload = self
            .store
            .put_multipart_opts(&path(&spec.key)?, options)
            .await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut source = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match source.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
            };
            if n == 0 {
                break;
            }
            // At most two parts in flight: memory stays near 2 × PART_SIZE.
            if let Err(e) = writer.wait_for_capacity(2).await {
                // A refused part (full disk, failing bucket) leaves no staging file or
                // unfinished upload behind.
                let _ = writer.abort().await;
                return Err(e.into());
            }
            writer.write(&buf[..n]);
        }
        // `finish` aborts the upload itself when a part or the completion fails.
        writer.finish().await?;
        Ok(Created::Written)
    }

    /// Writes spooled bytes, create-only when `create`.
    pub async fn put_spooled(
        &self,
        spec: &ObjectSpec,
        spooled: &Spooled,
        create: bool,
    ) -> Result<Created, BlobError> {
        match spooled {
            Spooled::Memory(bytes) if create => self.put_create(spec, bytes.clone()).await,
            Spooled::Memory(bytes) => self
                .put(spec, bytes.clone())
                .await
                .map(|()| Created::Written),
            Spooled::File(file) => self.put_file(spec, file.path(), create).await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<GetResult, BlobError> {
        let path = path(key)?;
        self.store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_owned()),
            other => other.into(),
        })
    }

    /// Reads a whole object into memory: only for objects known to be small.
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, BlobError> {
        Ok(self.get(key).await?.bytes().await?)
    }

    /// Streams an object into a local file (bounded memory).
    pub async fn get_to_file(&self, key: &str, file: &std::path::Path) -> Result<u64, BlobError> {
        use tokio::io::AsyncWriteExt;
        let mut stream = self.get(key).await?.into_stream();
        let mut out = tokio::fs::File::create(file).await?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(written)
    }

    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        let path = path(key)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's size in bytes; `None` when there is no such object.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match self.store.head(&path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes, reads back and deletes a small object: the bucket answers and accepts writes.
    pub async fn probe(&self) -> Result<(), BlobError> {
        let spec = super::keys::probe();
        self.put(&spec, Bytes::from_static(b"darkroom")).await?;
        // Removed even when it cannot be read back: each probe has a key of its own.
        let read = self.get_bytes(&spec.key).await;
        let removed = self.delete(&spec.key).await;
        read?;
        removed
    }

    /// Removes an object; one that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every key under `prefix`, for tests and tools.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        use futures::TryStreamExt;
        let prefix = path(prefix)?;
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        Ok(keys)
    }
}

fn path(key: &str) -> Result<ObjectPath, BlobError> {
    ObjectPath::parse(key).map_err(|_| BlobError::InvalidKey(key.to_owned()))
}
