//! The typed values configuration keys hold, and [`Setting`]: how each is read from an
//! environment variable's text or a TOML value. A value is parsed here once, at load;
//! nothing later parses it again.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::domain::request::ProviderName;

/// A value that must never reach a log line or a debug dump.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One raw value for a key: an environment variable's text (trimmed, not empty) or a
/// value from the TOML file.
#[derive(Clone, Copy, Debug)]
pub enum Raw<'a> {
    Text(&'a str),
    Toml(&'a toml::Value),
}

/// A type a configuration key can hold. `parse` reads the text form (environment
/// variables, built-in defaults); TOML scalars are read through their text, arrays element
/// by element. Problems start with `= "value"` where they quote it, so that a message reads
/// `invalid configuration: PORT = "eighty" is not a port number`.
pub trait Setting: Sized {
    fn parse(text: &str) -> Result<Self, String>;

    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Self::parse(s),
            toml::Value::Integer(i) => Self::parse(&i.to_string()),
            toml::Value::Float(f) => Self::parse(&f.to_string()),
            toml::Value::Boolean(b) => Self::parse(&b.to_string()),
            other => Err(format!("= {other} must be a single value")),
        }
    }

    fn read(raw: Raw<'_>) -> Result<Self, String> {
        match raw {
            Raw::Text(text) => Self::parse(text),
            Raw::Toml(value) => Self::from_toml(value),
        }
    }
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn parse(raw: &str) -> Result<Self, String> {
                raw.trim()
                    .parse()
                    .map_err(|_| format!("= {raw:?} is not a valid number"))
            }
        }
    )*};
}
numbers!(u32, u64, usize, f64);

impl Setting for bool {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!("= {raw:?} is not true or false")),
        }
    }
}

impl Setting for String {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(raw.to_owned())
    }
}

impl Setting for PathBuf {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(PathBuf::from(raw))
    }
}

impl Setting for Secret {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(Secret::new(raw))
    }
}

impl Setting for Url {
    fn parse(raw: &str) -> Result<Self, String> {
        parse_http_url(raw)
    }
}

impl Setting for SocketAddr {
    fn parse(raw: &str) -> Result<Self, String> {
        raw.parse()
            .map_err(|_| format!("= {raw:?} is not an address like 127.0.0.1:3000"))
    }
}

impl Setting for ProviderName {
    fn parse(raw: &str) -> Result<Self, String> {
        let names = ProviderName::ALL.map(ProviderName::as_str);
        ProviderName::parse(&raw.to_ascii_lowercase())
            .map_err(|_| format!("= {raw:?} must be one of {}", names.join(", ")))
    }
}

impl<T: Setting> Setting for Option<T> {
    fn parse(raw: &str) -> Result<Self, String> {
        T::parse(raw).map(Some)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        T::from_toml(value).map(Some)
    }
}

/// Provider failover's chain, `kie:gemini`: a task moves from a provider to the next one
/// after it. Empty: failover is off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailoverChain(pub Vec<ProviderName>);

impl Setting for FailoverChain {
    fn parse(raw: &str) -> Result<Self, String> {
        let mut chain: Vec<ProviderName> = Vec::new();
        for name in raw
            .split([':', ','])
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let provider = ProviderName::parse(&name.to_ascii_lowercase())
                .map_err(|_| format!("= {raw:?} names {name:?}, not a provider (kie, gemini)"))?;
            if chain.contains(&provider) {
                return Err(format!("= {raw:?} names {name} twice"));
            }
            chain.push(provider);
        }
        if chain.len() == 1 {
            return Err(format!(
                "= {raw:?} needs a provider to move to, like kie:gemini"
            ));
        }
        Ok(Self(chain))
    }
}

/// A comma-separated list in the environment (empty entries dropped), an array in TOML.
impl<T: Setting> Setting for Vec<T> {
    fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(T::parse)
            .collect()
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Array(items) => items.iter().map(T::from_toml).collect(),
            other => Err(format!("= {other} must be an array")),
        }
    }
}

/// An `http` or `https` URL with a host.
pub fn parse_http_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|_| format!("= {raw:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("= {raw:?} must be an http(s) URL with a host"));
    }
    Ok(url)
}

/// A fixed set of lowercase words, each a variant.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }, $problem:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl Setting for $name {
            fn parse(raw: &str) -> Result<Self, String> {
                match raw.to_ascii_lowercase().as_str() {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(format!($problem, raw)),
                }
            }
        }
    };
}

choice!(
    /// SQLite's `synchronous` setting (always in WAL mode).
    Synchronous {
        #[default]
        Normal = "normal",
        Full = "full",
    },
    "= {:?} is not normal or full"
);

choice!(
    /// Without a public base URL, how `/files/{key}` answers.
    UrlMode {
        #[default]
        Proxy = "proxy",
        Presigned = "presigned",
    },
    "= {:?} must be proxy or presigned"
);

choice!(
    /// How input images reach the provider.
    InputMode {
        /// The public base URL when set; else presigned URLs on S3; else darkroom's own URL.
        #[default]
        Auto = "auto",
        Public = "public",
        Presigned = "presigned",
        Proxy = "proxy",
        /// Push each input through KIE's file upload API and hand KIE that URL.
        KieUpload = "kie-upload",
    },
    "= {:?} must be auto, public, presigned, proxy or kie-upload"
);

choice!(
    /// What a task that would exceed a daily credit budget does.
    BudgetPolicy {
        /// It stays queued until the budget resets (the next UTC day).
        #[default]
        Wait = "wait",
        /// It fails with `budget_exhausted`.
        Fail = "fail",
    },
    "= {:?} must be wait or fail"
);

choice!(
    /// How log lines are written.
    LogFormat {
        #[default]
        Text = "text",
        Json = "json",
    },
    "= {:?} must be text or json"
);

/// What an instance does (`DARKROOM_ROLES`): serve the API, run the workers, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// Serves the API, the page, callbacks and files.
    pub api: bool,
    /// Runs the queue: dispatch, polling, ingest, webhooks, retention sweeps.
    pub workers: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Self {
            api: true,
            workers: true,
        }
    }
}

impl Setting for Roles {
    fn parse(raw: &str) -> Result<Self, String> {
        let mut roles = Self {
            api: false,
            workers: false,
        };
        for word in raw.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "api" => roles.api = true,
                "workers" => roles.workers = true,
                _ => return Err(format!("= {raw:?}: {word:?} is not a role (api, workers)")),
            }
        }
        if !roles.api && !roles.workers {
            return Err(format!("= {raw:?} names no role: api, workers, or both"));
        }
        Ok(roles)
    }

    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Array(items) => {
                let words: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
                let words = words.ok_or_else(|| format!("= {value} must list role names"))?;
                Self::parse(&words.join(","))
            }
            other => Self::parse(other.as_str().unwrap_or_default()),
        }
    }
}

/// A duration written in whole seconds (the `*_secs` keys).
#[derive(Clone, Copy, Debug)]
pub struct Secs(pub Duration);

impl Setting for Secs {
    fn parse(raw: &str) -> Result<Self, String> {
        u64::parse(raw).map(|n| Self(Duration::from_secs(n)))
    }
}

/// A duration written in hours, fractions allowed (the `*_hours` keys): `24`, `0.5`.
#[derive(Clone, Copy, Debug)]
pub struct Hours(pub Duration);

impl Setting for Hours {
    fn parse(raw: &str) -> Result<Self, String> {
        let hours = f64::parse(raw)?;
        // Up to ten years: beyond that is a typo, not a policy.
        if !(0.0..=87_600.0).contains(&hours) {
            return Err(format!(
                "= {raw:?} must be a number of hours from 0 to 87600"
            ));
        }
        Ok(Self(Duration::from_secs_f64(hours * 3600.0)))
    }
}

/// A duration written in whole milliseconds (the `*_ms` keys).
#[derive(Clone, Copy, Debug)]
pub struct Millis(pub Duration);

impl Setting for Millis {
    fn parse(raw: &str) -> Result<Self, String> {
        u64::parse(raw).map(|n| Self(Duration::from_millis(n)))
    }
}

/// A generation time, `MIN-MAX` milliseconds or one number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyRange {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl LatencyRange {
    /// As the simulators take it: `(min, max)` milliseconds.
    pub fn as_millis(self) -> (u64, u64) {
        (self.min_ms, self.max_ms)
    }
}

impl Setting for LatencyRange {
    fn parse(raw: &str) -> Result<Self, String> {
        let bad =
            || format!("= {raw:?} must be milliseconds as MIN-MAX (e.g. 1000-3000) or one number");
        let (min, max) = match raw.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let v = raw.trim().parse().map_err(|_| bad())?;
                (v, v)
            }
        };
        if min > max {
            return Err(bad());
        }
        Ok(Self {
            min_ms: min,
            max_ms: max,
        })
    }
}

impl std::str::FromStr for LatencyRange {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        Self::parse(raw)
    }
}

/// `host:port`, as in the trusted fetch list; the host lowercased, IPv6 brackets removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl Setting for HostPort {
    fn parse(raw: &str) -> Result<Self, String> {
        let bad = || format!("{raw:?} must be host:port");
        let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// A result host pattern, lowercased: `example.com` (that host) or `*.example.com` (its
/// subdomains).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Setting for HostPattern {
    fn parse(raw: &str) -> Result<Self, String> {
        let host = raw.strip_prefix("*.").unwrap_or(raw);
        let ok = !host.is_empty()
            && host.contains('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if ok {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{raw:?} must be a host name like tempfile.example.com or *.example.com"
            ))
        }
    }
}

/// A browser origin, `scheme://host[:port]` with nothing after it, in its serialized form.
/// `*` is refused: the allowlist is explicit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Setting for Origin {
    fn parse(raw: &str) -> Result<Self, String> {
        let bad = || format!("{raw:?} must be an origin like https://app.example.com");
        let url = Url::parse(raw).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.path() != "/"
            || url.query().is_some()
            || raw.trim_end_matches('/').len() < raw.len().saturating_sub(1)
        {
            return Err(bad());
        }
        Ok(Self(url.origin().ascii_serialization()))
    }
}

/// HTTP statuses the Gemini simulator can be told to answer.
pub const GEMINI_FAULT_STATUSES: [u16; 7] = [400, 403, 404, 429, 500, 503, 504];

/// The Gemini simulator's error knob, `STATUS=RATE[,STATUS=RATE…]` (e.g. `429=0.3,503=0.1`);
/// empty means none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorRates(pub Vec<(u16, f64)>);

impl Setting for ErrorRates {
    fn parse(raw: &str) -> Result<Self, String> {
        let allowed = GEMINI_FAULT_STATUSES.map(|s| s.to_string()).join(", ");
        let rates = raw
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let bad = || format!("{item:?} must be STATUS=RATE, e.g. 429=0.3");
                let (status, rate) = item.split_once('=').ok_or_else(bad)?;
                let status: u16 = status.trim().parse().map_err(|_| bad())?;
                let rate: f64 = rate.trim().parse().map_err(|_| bad())?;
                if !GEMINI_FAULT_STATUSES.contains(&status) {
                    return Err(format!("status {status} is not one of {allowed}"));
                }
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("rate {rate} for {status} must be between 0 and 1"));
                }
                Ok((status, rate))
            })
            .collect::<Result<_, String>>()
            .map_err(|p| format!("= {raw:?}: {p}"))?;
        Ok(Self(rates))
    }
}

impl std::str::FromStr for ErrorRates {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        Self::parse(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_parses_ranges_and_single_values() {
        let ms = |raw: &str| LatencyRange::parse(raw).map(LatencyRange::as_millis);
        assert_eq!(ms("1000-3000"), Ok((1000, 3000)));
        assert_eq!(ms(" 500 "), Ok((500, 500)));
        assert_eq!(ms("0-0"), Ok((0, 0)));
        for bad in ["", "fast", "3000-1000", "1-2-3", "-5", "10-"] {
            let err = ms(bad).expect_err(bad);
            assert!(err.contains("MIN-MAX"), "{err}");
        }
    }

    #[test]
    fn error_rates_are_checked() {
        assert_eq!(
            ErrorRates::parse("429=0.3, 503=1").unwrap().0,
            vec![(429, 0.3), (503, 1.0)]
        );
        assert_eq!(ErrorRates::parse("").unwrap().0, vec![]);
        assert!(ErrorRates::parse("418=0.1").unwrap_err().contains("418"));
        assert!(
            ErrorRates::parse("429=2")
                .unwrap_err()
                .contains("between 0 and 1")
        );
        assert!(ErrorRates::parse("429").is_err());
    }

    #[test]
    fn hosts_and_origins_are_normalised() {
        assert_eq!(
            HostPort::parse("[::1]:9090").unwrap(),
            HostPort {
                host: "::1".into(),
                port: 9090
            }
        );
        assert_eq!(
            HostPort::parse("LocalHost:80").unwrap().host,
            "localhost".to_owned()
        );
        assert!(HostPort::parse("localhost").is_err());
        assert_eq!(HostPattern::parse("*.KIE.ai").unwrap().as_str(), "*.kie.ai");
        assert_eq!(
            Origin::parse("https://App.example.com/").unwrap().as_str(),
            "https://app.example.com"
        );
        assert!(Origin::parse("*").is_err());
    }

    #[test]
    fn toml_values_read_like_their_text() {
        let v = |s: &str| s.parse::<toml::Table>().unwrap()["v"].clone();
        assert_eq!(u64::from_toml(&v("v = 5")), Ok(5));
        assert_eq!(f64::from_toml(&v("v = 0.5")), Ok(0.5));
        assert_eq!(bool::from_toml(&v("v = false")), Ok(false));
        assert_eq!(
            Vec::<String>::from_toml(&v("v = [\"a\", \"b\"]")),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(u64::from_toml(&v("v = [1]")).is_err());
    }
}
