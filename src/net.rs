//! The one outbound HTTP client for URLs that came from outside (provider results, client
//! image URLs): https to public addresses only, redirects re-checked hop by hop, no proxy,
//! byte and time caps. Loopback and plain http are reachable only for `host:port` pairs the
//! operator named (`DARKROOM_TRUSTED_FETCH_HOSTS`) or the in-process simulator. When the
//! operator lists result hosts (`DARKROOM_RESULT_HOSTS`), no other host is fetched.
//!
//! Every hop is checked before a connection is made: scheme, credentials, the allowlist,
//! then the address — IP literals in every spelling the URL parser accepts (`127.1`,
//! `2130706433`, `0x7f000001`, `0177.0.0.1`, `[::ffff:127.0.0.1]`) are normalised by it and
//! checked here, because a custom resolver never sees literals; names are resolved here
//! and again by the client's resolver, which drops non-public addresses, so a name that
//! changes its answer between the two (DNS rebinding) still cannot reach a private address.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

const MAX_REDIRECTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("refused to fetch {url}: {reason}")]
    Forbidden { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is larger than the {} limit", crate::domain::size::human(*max_bytes))]
    TooLarge { url: String, max_bytes: u64 },
    #[error("fetching {url} failed: {message}")]
    Transport { url: String, message: String },
    /// The host name does not exist (NXDOMAIN, or a `.invalid` name). Whether that may pass
    /// is the caller's call: a result host's DNS may recover, a client's typo will not.
    #[error("fetching {url} failed: {message}")]
    Unresolvable { url: String, message: String },
    #[error("{url} redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects { url: String },
}

impl FetchError {
    /// Refusals will not change on retry; transport problems and 5xx may.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Forbidden { .. } | Self::TooLarge { .. } | Self::TooManyRedirects { .. } => false,
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            Self::Transport { .. } | Self::Unresolvable { .. } => true,
        }
    }
}

/// Why a URL was not opened: a rule refused it (final), its name does not exist, or the
/// lookup failed for now (no resolver answered).
enum Refusal {
    Rule(String),
    NoSuchName(String),
    Lookup(String),
}

impl Refusal {
    fn into_fetch_error(self, url: &Url) -> FetchError {
        match self {
            Self::Rule(reason) => FetchError::Forbidden {
                url: redact(url),
                reason,
            },
            Self::NoSuchName(message) => FetchError::Unresolvable {
                url: redact(url),
                message,
            },
            Self::Lookup(message) => FetchError::Transport {
                url: redact(url),
                message,
            },
        }
    }
}

/// Hosts allowed past the public-address rule, shared with the DNS resolver.
#[derive(Debug, Default)]
struct Trusted {
    pairs: HashSet<(String, u16)>,
    names: HashSet<String>,
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    trusted: Arc<Trusted>,
    /// Where names are looked up, by the check and by the client's resolver alike.
    lookup: Arc<dyn Resolve>,
    connect_timeout: Duration,
    timeout: Duration,
    /// `DARKROOM_RESULT_HOSTS`: `host` or `*.domain` patterns; empty allows every public host.
    allowed_hosts: Arc<Vec<String>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("trusted", &self.trusted.pairs)
            .finish()
    }
}

/// The one way darkroom builds an outbound HTTP client: no proxy from the environment
/// (a variable must not divert traffic), no redirects followed by the client (the guarded
/// fetcher follows them itself, re-checking each hop; provider APIs never redirect), the
/// same user agent, and both timeouts. The fetcher adds its public-only resolver; provider
/// clients (KIE, Gemini), whose base URLs are operator configuration, use it as it is.
pub fn client_builder(connect_timeout: Duration, timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .user_agent(concat!("darkroom/", env!("CARGO_PKG_VERSION")))
}

impl Fetcher {
    pub fn new(
        trusted_hosts: impl IntoIterator<Item = (String, u16)>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let mut trusted = Trusted::default();
        for (host, port) in trusted_hosts {
            let host = host.to_ascii_lowercase();
            trusted.names.insert(host.clone());
            trusted.pairs.insert((host, port));
        }
        let trusted = Arc::new(trusted);
        let lookup: Arc<dyn Resolve> = Arc::new(SystemLookup);
        Ok(Self {
            client: guarded_client(&trusted, &lookup, connect_timeout, timeout)?,
            trusted,
            lookup,
            connect_timeout,
            timeout,
            allowed_hosts: Arc::new(Vec::new()),
        })
    }

    /// Looks names up with `resolver` instead of the system's, both when a URL is checked
    /// and when the client connects (whose answers are filtered as ever). Tests use it to
    /// stand in for DNS, e.g. a name whose answer changes between two lookups.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Result<Self, reqwest::Error> {
        self.client = guarded_client(&self.trusted, &resolver, self.connect_timeout, self.timeout)?;
        self.lookup = resolver;
        Ok(self)
    }

    /// Fetches only from hosts matching `patterns` (`host`, or `*.domain` for any
    /// subdomain of it); trusted hosts stay reachable. Empty: any public host.
    #[must_use]
    pub fn with_allowed_hosts(mut self, patterns: impl IntoIterator<Item = String>) -> Self {
        self.allowed_hosts = Arc::new(
            patterns
                .into_iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
        );
        self
    }

    fn host_allowed(&self, url: &Url) -> bool {
        if self.allowed_hosts.is_empty() {
            return true;
        }
        // IP literals never match a host pattern.
        let Some(Host::Domain(host)) = url.host() else {
            return false;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == *pattern,
            })
    }

    fn is_trusted(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.trusted.pairs.contains(&(host, port))
    }

    /// Checks one hop before any connection is made. A name that does not resolve is a
    /// transport failure (DNS may recover), everything else a refusal.
    async fn check(&self, url: &Url) -> Result<(), FetchError> {
        self.check_rules(url)
            .await
            .map_err(|refusal| refusal.into_fetch_error(url))
    }

    async fn check_rules(&self, url: &Url) -> Result<(), Refusal> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Rule(
                "URLs with credentials are not fetched".to_owned(),
            ));
        }
        match url.scheme() {
            "https" | "http" => {}
            other => return Err(Refusal::Rule(format!("the {other}: scheme is not fetched"))),
        }
        if self.is_trusted(url) {
            return Ok(());
        }
        if url.scheme() != "https" {
            return Err(Refusal::Rule(
                "only https is fetched from hosts not named in DARKROOM_TRUSTED_FETCH_HOSTS"
                    .to_owned(),
            ));
        }
        if !self.host_allowed(url) {
            return Err(Refusal::Rule(
                "the host is not in DARKROOM_RESULT_HOSTS".to_owned(),
            ));
        }
        match url.host() {
            None => Err(Refusal::Rule("the URL has no host".to_owned())),
            // The resolver is skipped for literals, so they are checked here.
            Some(Host::Ipv4(ip)) => public_or_refuse(IpAddr::V4(ip)).map_err(Refusal::Rule),
            Some(Host::Ipv6(ip)) => public_or_refuse(IpAddr::V6(ip)).map_err(Refusal::Rule),
            Some(Host::Domain(name)) => {
                // RFC 6761: `.invalid` names never resolve, and resolver libraries should say
                // so at once rather than ask the network.
                let bare = name.trim_end_matches('.').to_ascii_lowercase();
                if bare == "invalid" || bare.ends_with(".invalid") {
                    return Err(Refusal::NoSuchName(format!(
                        "{name} does not resolve: .invalid names never exist (RFC 6761)"
                    )));
                }
                let host: Name = name.parse().map_err(|e| lookup_failure(name, &e))?;
                let addrs = self
                    .lookup
                    .resolve(host)
                    .await
                    .map_err(|e| lookup_failure(name, &e))?;
                for addr in addrs {
                    public_or_refuse(addr.ip()).map_err(Refusal::Rule)?;
                }
                Ok(())
            }
        }
    }

    /// Opens `url` (following at most three redirects, each checked like the first URL)
    /// and returns the successful response with the URL as it may be logged.
    async fn open(&self, url: &str) -> Result<(reqwest::Response, String), FetchError> {
        let mut current = Url::parse(url).map_err(|_| FetchError::Forbidden {
            url: url.to_owned(),
            reason: "not a valid URL".to_owned(),
        })?;
        for _ in 0..=MAX_REDIRECTS {
            let shown = redact(&current);
            self.check(&current).await?;
            let response = self.client.get(current.clone()).send().await.map_err(|e| {
                FetchError::Transport {
                    url: shown.clone(),
                    message: transport_message(e),
                }
            })?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| FetchError::Status {
                        url: shown.clone(),
                        status: status.as_u16(),
                    })?;
                current = current.join(location).map_err(|_| FetchError::Forbidden {
                    url: shown.clone(),
                    reason: "redirect to an invalid URL".to_owned(),
                })?;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status {
                    url: shown,
                    status: status.as_u16(),
                });
            }
            return Ok((response, shown));
        }
        Err(FetchError::TooManyRedirects {
            url: redact(&current),
        })
    }

    /// POSTs `body` to `url` with `headers` (a webhook), under the same rules as every
    /// fetch: the URL is checked before connecting and the resolver refuses private
    /// addresses. Redirects are not followed (a POST must not be replayed elsewhere).
    /// Returns the status of a 2xx answer; anything else is an error.
    pub async fn post(
        &self,
        url: &str,
        headers: reqwest::header::HeaderMap,
        body: Bytes,
    ) -> Result<u16, FetchError> {
        let parsed = Url::parse(url).map_err(|_| FetchError::Forbidden {
            url: url.to_owned(),
            reason: "not a valid URL".to_owned(),
        })?;
        let shown = redact(&parsed);
        self.check(&parsed).await?;
        let response = self
            .client
            .post(parsed)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| FetchError::Transport {
                url: shown.clone(),
                message: transport_message(e),
            })?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            Ok(status)
        } else {
            Err(FetchError::Status { url: shown, status })
        }
    }

    /// The first `len` bytes of `url`'s body (fewer if it is shorter); the rest is not
    /// read. Enough to tell what kind of file it is without downloading it.
    pub async fn get_prefix(&self, url: &str, len: usize) -> Result<Bytes, FetchError> {
        let (mut response, shown) = self.open(url).await?;
        let mut prefix = BytesMut::with_capacity(len);
        while prefix.len() < len {
            let chunk = response.chunk().await.map_err(|e| FetchError::Transport {
                url: shown.clone(),
                message: e.without_url().to_string(),
            })?;
            let Some(chunk) = chunk else { break };
            prefix.extend_from_slice(&chunk);
        }
        prefix.truncate(len);
        Ok(prefix.freeze())
    }

    /// Downloads `url` into memory, at most `max_bytes`.
    pub async fn get_bytes(&self, url: &str, max_bytes: u64) -> Result<Bytes, FetchError> {
        let (response, shown) = self.open(url).await?;
        let mut body = BytesMut::new();
        stream_capped(response, max_bytes, &shown, |chunk| {
            body.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(body.freeze())
    }

    /// Downloads `url`, at most `max_bytes`, into memory while small and a temporary file
    /// once large (see `SpoolWriter`).
    pub async fn download_spooled(
        &self,
        url: &str,
        max_bytes: u64,
    ) -> Result<crate::spool::Spooled, FetchError> {
        let (response, shown) = self.open(url).await?;
        let mut spool = crate::spool::SpoolWriter::expecting(response.content_length());
        stream_capped(response, max_bytes, &shown, |chunk| spool.write(chunk)).await?;
        spool.finish().map_err(|e| FetchError::Transport {
            url: shown.clone(),
            message: format!("spooling the download failed: {e}"),
        })
    }
}

/// Feeds the body to `sink` chunk by chunk, refusing it once it passes `max_bytes`.
async fn stream_capped(
    mut response: reqwest::Response,
    max_bytes: u64,
    shown: &str,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<u64, FetchError> {
    let too_large = || FetchError::TooLarge {
        url: shown.to_owned(),
        max_bytes,
    };
    if response.content_length().is_some_and(|len| len > max_bytes) {
        return Err(too_large());
    }
    let mut size = 0u64;
    loop {
        let chunk = response.chunk().await.map_err(|e| FetchError::Transport {
            url: shown.to_owned(),
            message: transport_message(e),
        })?;
        let Some(chunk) = chunk else { break };
        size += chunk.len() as u64;
        if size > max_bytes {
            return Err(too_large());
        }
        sink(&chunk).map_err(|e| FetchError::Transport {
            url: shown.to_owned(),
            message: format!("storing the download failed: {e}"),
        })?;
    }
    Ok(size)
}

/// A failed lookup: the name does not exist, or no resolver gave an answer for now
/// (getaddrinfo's `EAI_AGAIN`, "Temporary failure in name resolution").
fn lookup_failure(name: &str, e: &dyn std::fmt::Display) -> Refusal {
    let text = e.to_string();
    let message = format!("{name} does not resolve: {text}");
    let lower = text.to_ascii_lowercase();
    if lower.contains("temporary failure") || lower.contains("try again") {
        Refusal::Lookup(message)
    } else {
        Refusal::NoSuchName(message)
    }
}

/// A URL as it may appear in logs and errors: no query string (it may carry a token).
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

fn public_or_refuse(ip: IpAddr) -> Result<(), String> {
    if is_public(ip) {
        Ok(())
    } else {
        Err(format!("{ip} is not a public address"))
    }
}

/// Whether `ip` is a globally routable unicast address. Everything else (loopback, private,
/// link-local, shared, benchmarking, reserved, multicast, documentation, and IPv6 forms that
/// embed an IPv4 address) is refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64, well-known and local-use: embed IPv4
        || (s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0) // IPv4-translated (SIIT)
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only
        || s[0] == 0x2002 // 6to4: embeds an IPv4 address
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || (s[0..6] == [0, 0, 0, 0, 0, 0])) // IPv4-compatible (deprecated)
}

/// A client error as a sentence with its causes ("error sending request: … has no public
/// address"), without the URL (which may carry a signature; callers add the redacted one).
fn transport_message(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The fetcher's client: [`client_builder`] with the public-only resolver over `lookup`.
fn guarded_client(
    trusted: &Arc<Trusted>,
    lookup: &Arc<dyn Resolve>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    client_builder(connect_timeout, timeout)
        .dns_resolver(Arc::new(PublicOnlyResolver {
            trusted: trusted.clone(),
            lookup: lookup.clone(),
        }))
        .build()
}

/// The system's resolver (`getaddrinfo` through tokio).
struct SystemLookup;

impl Resolve for SystemLookup {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Resolves names and drops every non-public address, so a name that resolves to a private
/// address cannot be reached even if it changes between the check and the connection.
struct PublicOnlyResolver {
    trusted: Arc<Trusted>,
    lookup: Arc<dyn Resolve>,
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let trusted = self.trusted.names.contains(&host);
        let lookup = self.lookup.resolve(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup
                .await?
                .filter(|addr| trusted || is_public(addr.ip()))
                .collect();
            if addrs.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} has no public address").into();
                return Err(err);
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {

    /// A webhook or result host whose name does not resolve right now is retried later
    /// (DNS recovers); a host the rules refuse is not.
    #[test]
    fn lookups_that_fail_are_retried_and_refusals_are_not() {
        let url = Url::parse("https://hooks.example.com/x?token=secret").unwrap();
        let lookup = Refusal::Lookup("hooks.example.com does not resolve".into());
        let failed = lookup.into_fetch_error(&url);
        assert!(failed.is_retryable());
        assert!(!failed.to_string().contains("secret"), "{failed}");
        let refused =
            Refusal::Rule("10.0.0.1 is not a public address".into()).into_fetch_error(&url);
        assert!(!refused.is_retryable());
    }

    use super::*;

    #[test]
    fn address_classes() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "169.254.169.254",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            "fe80::1",
            "fc00::1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "100::1",
            "2002:a00:1::",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} should not be public");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[tokio::test]
    async fn literals_and_schemes_are_refused_before_connecting() {
        let fetcher = Fetcher::new([], Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        for url in [
            "https://127.0.0.1/",
            "https://127.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://[::ffff:127.0.0.1]/",
            "http://example.com/",
            "https://user@allowed@127.0.0.1/",
            "file:///etc/passwd",
            "ftp://example.com/x",
            "gopher://example.com/",
            "data:image/png;base64,AAAA",
        ] {
            let err = fetcher.get_bytes(url, 1024).await.unwrap_err();
            assert!(matches!(err, FetchError::Forbidden { .. }), "{url}: {err}");
        }
    }

    #[test]
    fn result_host_patterns() {
        let fetcher = Fetcher::new([], Duration::from_secs(1), Duration::from_secs(1))
            .unwrap()
            .with_allowed_hosts(["tempfile.aiquickdraw.com".to_owned(), "*.kie.ai".to_owned()]);
        for (url, allowed) in [
            ("https://tempfile.aiquickdraw.com/a.png", true),
            ("https://TEMPFILE.aiquickdraw.com./a.png", true),
            ("https://cdn.kie.ai/a.png", true),
            ("https://a.b.kie.ai/a.png", true),
            ("https://kie.ai/a.png", false),
            ("https://evilkie.ai/a.png", false),
            ("https://kie.ai.evil.com/a.png", false),
            ("https://aiquickdraw.com/a.png", false),
            ("https://1.1.1.1/a.png", false),
        ] {
            assert_eq!(
                fetcher.host_allowed(&Url::parse(url).unwrap()),
                allowed,
                "{url}"
            );
        }
    }

    #[test]
    fn redaction_drops_tokens() {
        let url = Url::parse("https://h/api/callback/tsk_1?token=secret").unwrap();
        assert_eq!(redact(&url), "https://h/api/callback/tsk_1");
    }
}
