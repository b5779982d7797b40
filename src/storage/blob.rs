//! The bucket: one interface over the local directory, S3/R2 and memory (`object_store`),
//! plus how object URLs are made.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, GetResult, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use url::Url;

use super::keys::ObjectSpec;
use crate::config::{Config, S3Config};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    #[error("bucket error: {0}")]
    Store(#[from] object_store::Error),
    #[error("cannot prepare the bucket directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
}

/// What a create-only write found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Written,
    /// The key was already there: an earlier attempt stored it. Not an error.
    AlreadyExisted,
}

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// The local directory keeps no metadata; content type comes from the key there.
    keeps_attributes: bool,
    /// `R2_PUBLIC_BASE_URL`: objects are public at `{base}/{key}`.
    public_base: Option<Url>,
    /// Otherwise darkroom serves them at `{server}/files/{key}`.
    server_base: Url,
    description: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl BlobStore {
    /// Builds the store the configuration names. `server_base` is this server's public URL.
    pub fn from_config(config: &Config, server_base: Url) -> Result<Self, BlobError> {
        let public_base = config.storage.public_base_url.clone();
        match &config.storage.s3 {
            Some(s3) => Self::s3(s3, public_base, server_base),
            None => {
                let dir = config.bucket_dir();
                std::fs::create_dir_all(&dir).map_err(|source| BlobError::Directory {
                    path: dir.display().to_string(),
                    source,
                })?;
                let local = LocalFileSystem::new_with_prefix(&dir)?;
                Ok(Self {
                    store: Arc::new(local),
                    keeps_attributes: false,
                    public_base,
                    server_base,
                    description: format!("local directory {}", dir.display()),
                })
            }
        }
    }

    fn s3(s3: &S3Config, public_base: Option<Url>, server_base: Url) -> Result<Self, BlobError> {
        let store = AmazonS3Builder::new()
            .with_endpoint(s3.endpoint.as_str().trim_end_matches('/'))
            .with_region(&s3.region)
            .with_bucket_name(&s3.bucket)
            .with_access_key_id(&s3.access_key_id)
            .with_secret_access_key(s3.secret_access_key.expose())
            .with_allow_http(s3.endpoint.scheme() == "http")
            .with_virtual_hosted_style_request(false)
            .build()?;
        Ok(Self {
            store: Arc::new(store),
            keeps_attributes: true,
            public_base,
            server_base,
            description: format!("S3 bucket {} at {}", s3.bucket, s3.endpoint),
        })
    }

    /// An in-memory bucket, for tests.
    pub fn memory(server_base: Url) -> Self {
        Self {
            store: Arc::new(InMemory::new()),
            keeps_attributes: true,
            public_base: None,
            server_base,
            description: "in-memory bucket".to_owned(),
        }
    }

    /// Which backend and bucket, for the start-up log (never a secret).
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// The URL at which a browser (or the provider) opens `key`.
    pub fn url(&self, key: &str) -> String {
        match &self.public_base {
            Some(base) => format!("{}/{key}", base.as_str().trim_end_matches('/')),
            None => format!(
                "{}/files/{key}",
                self.server_base.as_str().trim_end_matches('/')
            ),
        }
    }

    fn options(&self, spec: &ObjectSpec, mode: PutMode) -> PutOptions {
        let mut attributes = Attributes::new();
        if self.keeps_attributes {
            attributes.insert(Attribute::ContentType, spec.content_type.into());
            attributes.insert(Attribute::CacheControl, spec.cache_control.into());
        }
        PutOptions {
            mode,
            attributes,
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

    pub async fn get(&self, key: &str) -> Result<GetResult, BlobError> {
        let path = path(key)?;
        self.store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_owned()),
            other => other.into(),
        })
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, BlobError> {
        Ok(self.get(key).await?.bytes().await?)
    }

    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        let path = path(key)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes and reads back a small object: the bucket answers and accepts writes.
    pub async fn probe(&self) -> Result<(), BlobError> {
        let spec = super::keys::probe();
        self.put(&spec, Bytes::from_static(b"darkroom")).await?;
        self.get_bytes(&spec.key).await?;
        Ok(())
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
