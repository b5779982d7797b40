use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn zero_configuration_is_the_embedded_default() {
    let config = Config::from_env(&env(&[])).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:3000");
    assert_eq!(config.provider_mode(), ProviderMode::Simulator);
    assert_eq!(config.database_url(), "sqlite://./data/darkroom.db");
    assert_eq!(config.bucket_dir(), PathBuf::from("./data/bucket"));
}

#[test]
fn the_database_url_names_sqlite_or_postgres_and_errors_never_show_it() {
    for url in [
        "sqlite:///var/lib/darkroom/d.db",
        "postgres://app:pw@db:5432/darkroom",
        "postgresql://db/darkroom",
    ] {
        let config = Config::from_env(&env(&[("DARKROOM_DATABASE_URL", url)])).unwrap();
        assert_eq!(config.database_url(), url);
    }
    let refused = Config::from_env(&env(&[(
        "DARKROOM_DATABASE_URL",
        "mysql://app:hunter2@db/darkroom",
    )]))
    .unwrap_err()
    .to_string();
    assert!(refused.contains("DARKROOM_DATABASE_URL"), "{refused}");
    assert!(refused.contains("postgres://"), "{refused}");
    assert!(!refused.contains("hunter2"), "{refused}");
}

#[test]
fn seed_variables_are_read_as_they_are() {
    let config = Config::from_env(&env(&[
        ("KIE_API_TOKEN", "secret-token"),
        ("KIE_CALLBACK_URL", "https://example.com/api/callback"),
        ("PORT", "8080"),
        ("DARKROOM_DATA_DIR", "/tmp/dr"),
        ("R2_ACCOUNT_ID", "abc123"),
        ("R2_ACCESS_KEY_ID", "id"),
        ("R2_SECRET_ACCESS_KEY", "s3cret"),
        ("R2_BUCKET_NAME", "images"),
    ]))
    .unwrap();
    assert_eq!(config.provider_mode(), ProviderMode::Kie);
    assert_eq!(config.server.listen.port(), 8080);
    assert_eq!(config.bucket_dir(), PathBuf::from("/tmp/dr/bucket"));
    let s3 = config.storage.s3.as_ref().unwrap();
    assert_eq!(
        s3.endpoint.as_str(),
        "https://abc123.r2.cloudflarestorage.com/"
    );
    assert_eq!(s3.region, "auto");
    assert!(!format!("{config:?}").contains("s3cret"));
    assert!(!format!("{config:?}").contains("secret-token"));
}

#[test]
fn invalid_values_name_the_key() {
    for (key, value) in [
        ("PORT", "eighty"),
        ("DARKROOM_LISTEN", "nowhere"),
        ("KIE_BASE_URL", "ftp://x"),
        ("DARKROOM_SIM_FAIL_RATE", "2"),
        ("DARKROOM_TRUSTED_FETCH_HOSTS", "localhost"),
        ("DARKROOM_MAX_UPLOAD_BYTES", "0"),
        ("DARKROOM_ROLES", "api,cron"),
        ("DARKROOM_ROLES", ","),
    ] {
        let err = Config::from_env(&env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        let short = key.trim_start_matches("DARKROOM_").to_ascii_lowercase();
        assert!(
            err.contains(key) || err.to_ascii_lowercase().contains(&short),
            "{key}: {err}"
        );
    }
    assert!(
        Config::from_env(&env(&[("R2_REGION", "eu")]))
            .unwrap()
            .storage
            .s3
            .is_none()
    );
    let err = Config::from_env(&env(&[("R2_BUCKET_NAME", "b")])).unwrap_err();
    assert!(err.to_string().contains("R2_ACCOUNT_ID"), "{err}");
}

#[test]
fn security_settings_are_checked_without_echoing_keys() {
    let config = Config::from_env(&env(&[
        (
            "DARKROOM_API_KEYS",
            "alice:alice-key-0123456789, bob:bob-key-0123456789",
        ),
        (
            "DARKROOM_CORS_ORIGINS",
            "https://app.example.com,http://localhost:5173",
        ),
        ("DARKROOM_RESULT_HOSTS", "tempfile.example.com,*.kie.ai"),
        ("KIE_WEBHOOK_HMAC_KEY", "whk-secret"),
    ]))
    .unwrap();
    let keys = config.configured_api_keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1].0, "bob");
    let dump = format!("{config:?}");
    assert!(
        !dump.contains("alice-key") && !dump.contains("whk-secret"),
        "{dump}"
    );
    for bad in [
        "alice",
        "alice:short",
        "a b:0123456789abcdef",
        "alice:0123456789abcdef,alice:fedcba9876543210",
    ] {
        let err = Config::from_env(&env(&[("DARKROOM_API_KEYS", bad)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("DARKROOM_API_KEYS"), "{err}");
        assert!(!err.contains("0123456789abcdef"), "the key leaked: {err}");
    }
    for (key, value) in [
        ("DARKROOM_CORS_ORIGINS", "*"),
        ("DARKROOM_CORS_ORIGINS", "https://app.example.com/path"),
        ("DARKROOM_RESULT_HOSTS", "http://x.com"),
        ("DARKROOM_HEADER_TIMEOUT_SECS", "0"),
    ] {
        let err = Config::from_env(&env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        let short = key.trim_start_matches("DARKROOM_").to_ascii_lowercase();
        assert!(
            err.contains(key) || err.to_ascii_lowercase().contains(&short),
            "{err}"
        );
    }
}

#[test]
fn gemini_is_simulated_until_a_key_is_set() {
    let config = Config::from_env(&env(&[])).unwrap();
    assert!(config.gemini_simulated());
    assert_eq!(config.default_provider, ProviderName::Kie);
    assert_eq!(config.gemini.model, "gemini-2.5-flash-image");
    let config = Config::from_env(&env(&[
        ("GEMINI_API_KEY", "g-secret"),
        ("GEMINI_BASE_URL", "http://127.0.0.1:9091"),
        ("DARKROOM_DEFAULT_PROVIDER", "Gemini"),
        ("DARKROOM_GEMINI_SIM_ERRORS", "429=0.5,503=0.1"),
    ]))
    .unwrap();
    assert!(!config.gemini_simulated());
    assert_eq!(config.default_provider, ProviderName::Gemini);
    assert!(!format!("{config:?}").contains("g-secret"));
    for (key, value) in [
        ("DARKROOM_DEFAULT_PROVIDER", "openai"),
        ("DARKROOM_GEMINI_MODEL", "../x"),
        ("DARKROOM_GEMINI_SIM_ERRORS", "418=1"),
        ("DARKROOM_GEMINI_SIM_BLOCK_RATE", "1.5"),
        ("DARKROOM_GEMINI_CONCURRENCY", "0"),
        ("GEMINI_BASE_URL", "nowhere"),
    ] {
        let err = Config::from_env(&env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn unknown_darkroom_variables_are_reported() {
    let unknown = Config::unknown_darkroom_vars(&env(&[
        ("DARKROOM_LISTN", "x"),
        ("DARKROOM_LISTEN", "y"),
        // The command-line client's: ours, though the server does not read them.
        ("DARKROOM_SERVER", "http://127.0.0.1:3000"),
        ("DARKROOM_KEY", "dk_x"),
    ]));
    assert_eq!(unknown, vec!["DARKROOM_LISTN".to_owned()]);
}

#[test]
fn every_documented_variable_is_read() {
    // Each variable set to a value no parser accepts must stop the start, naming it:
    // a variable in the table that is never read fails here. Free-text ones are skipped.
    let free_text = [
        "DARKROOM_LOG",
        "DARKROOM_DATA_DIR",
        "DARKROOM_BUCKET_DIR",
        "KIE_API_TOKEN",
        "KIE_WEBHOOK_HMAC_KEY",
        "GEMINI_API_KEY",
        "DARKROOM_METRICS_TOKEN",
    ];
    for var in KEYS.iter().flat_map(|k| k.env.iter()) {
        if free_text.contains(var) {
            continue;
        }
        let env: HashMap<String, String> =
            [(var.to_string(), "\u{1}not valid\u{1}".to_owned())].into();
        let result = Config::from_env(&env);
        assert!(
            result.is_err(),
            "{var} is declared but not read (or accepts anything)"
        );
        assert!(
            result.unwrap_err().to_string().contains(var),
            "{var}: the error names another key"
        );
    }
}

#[test]
fn keys_are_declared_once() {
    for (i, key) in KEYS.iter().enumerate() {
        assert!(!key.env.is_empty() && !key.doc.is_empty(), "{}", key.path);
        for other in &KEYS[i + 1..] {
            assert_ne!(key.path, other.path, "declared twice");
            for var in key.env {
                assert!(!other.env.contains(var), "{var} read by two keys");
            }
        }
    }
}

#[test]
fn a_key_in_the_table_is_read_from_toml_and_env_alike() {
    // (key, TOML value, the same value as an environment variable)
    for (path, toml_value, env_value) in [
        ("engine.tick_ms", "750", "750"),
        ("simulator.latency_ms", "\"10-20\"", "10-20"),
        (
            "fetch.trusted_hosts",
            "[\"Sim.local:9090\", \"[::1]:80\"]",
            "Sim.local:9090, [::1]:80",
        ),
        (
            "server.cors_origins",
            "[\"https://app.example.com\"]",
            "https://app.example.com",
        ),
        ("gemini.simulator.block_rate", "0.25", "0.25"),
        ("gemini.simulator.errors", "\"429=0.5\"", "429=0.5"),
        ("default_provider", "\"gemini\"", "gemini"),
        ("log.format", "\"json\"", "json"),
        ("engine.workers", "false", "false"),
        ("roles", "[\"workers\"]", "workers"),
        (
            "kie.base_url",
            "\"http://127.0.0.1:9090\"",
            "http://127.0.0.1:9090",
        ),
    ] {
        let key = keys::key(path);
        let (section, leaf) = path.rsplit_once('.').unwrap_or(("", path));
        let text = if section.is_empty() {
            format!("{leaf} = {toml_value}\n")
        } else {
            format!("[{section}]\n{leaf} = {toml_value}\n")
        };
        let mut from_file = Config::default();
        file::apply(&mut from_file, &text).unwrap();
        let from_env = Config::from_env(&env(&[(key.env[0], env_value)])).unwrap();
        let shown = (key.show)(&from_file);
        assert_eq!(shown, (key.show)(&from_env), "{path}");
        assert_ne!(
            shown,
            (key.show)(&Config::default()),
            "{path}: still the default"
        );
    }
}

#[test]
fn file_values_are_checked_and_unknown_keys_refused() {
    let mut config = Config::default();
    let err = file::apply(&mut config, "[server]\nlisten = \"nowhere\"\n").unwrap_err();
    assert!(err.contains("server.listen (DARKROOM_LISTEN)"), "{err}");
    let err = file::apply(&mut config, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(err.contains("unknown key server.lisen"), "{err}");
    let err = file::apply(&mut config, "[engine]\ntick_ms = \"soon\"\n").unwrap_err();
    assert!(err.contains("engine.tick_ms"), "{err}");
    file::apply(
        &mut config,
        "[storage.s3]\nendpoint = \"http://127.0.0.1:5999\"\nregion = \"auto\"\n\
         bucket = \"b\"\naccess_key_id = \"id\"\nsecret_access_key = \"s3cret\"\n",
    )
    .unwrap();
    assert_eq!(config.storage.s3.as_ref().unwrap().bucket, "b");
}

#[test]
fn the_example_file_parses_and_documents_every_key() {
    let example = include_str!("../../darkroom.example.toml");
    let mut parsed = Config::default();
    file::apply(&mut parsed, example).unwrap();
    let defaults = Config::default();
    // Each key's line, `leaf = value` (or `# leaf = value` for keys unset by default), in
    // its section, the value being the default; and every variable named.
    let mut section = String::new();
    let mut lines: Vec<(String, String)> = Vec::new();
    for line in example.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some(name) = line.strip_prefix("# [").and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((leaf, _)) = line.trim_start_matches("# ").split_once(" = ") {
            let path = if section.is_empty() {
                leaf.to_owned()
            } else {
                format!("{section}.{leaf}")
            };
            lines.push((path, line.to_owned()));
        }
    }
    let line_of = |path: &str| {
        lines
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, l)| l.clone())
    };
    for key in KEYS {
        let line = line_of(key.path)
            .unwrap_or_else(|| panic!("darkroom.example.toml does not document {}", key.path));
        assert_eq!(
            line.starts_with('#'),
            key.default.is_none(),
            "{}: set it in the example exactly when it has a default",
            key.path
        );
        assert_eq!(
            (key.show)(&parsed),
            (key.show)(&defaults),
            "darkroom.example.toml gives {} another value than its default",
            key.path
        );
        for var in key.env {
            assert!(
                example.contains(var),
                "darkroom.example.toml does not name {var}"
            );
        }
    }
    for (path, vars) in keys::S3_KEYS {
        assert!(
            line_of(path).is_some(),
            "darkroom.example.toml does not document {path}"
        );
        for var in vars {
            assert!(
                example.contains(var),
                "darkroom.example.toml does not name {var}"
            );
        }
    }
}

#[test]
fn hours_take_fractions_and_refuse_nonsense() {
    use super::types::{Hours, Setting};
    assert_eq!(Hours::parse("24").unwrap().0, Duration::from_secs(86_400));
    assert_eq!(Hours::parse("0.5").unwrap().0, Duration::from_secs(1_800));
    for bad in ["-1", "abc", "NaN", "inf", "100000"] {
        assert!(Hours::parse(bad).is_err(), "{bad}");
    }
    let e = Config::from_env(&env(&[("DARKROOM_IDEMPOTENCY_TTL_HOURS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("DARKROOM_IDEMPOTENCY_TTL_HOURS"), "{e}");
    let config = Config::from_env(&env(&[])).unwrap();
    assert_eq!(config.server.idempotency_ttl, Duration::from_secs(86_400));
}

#[test]
fn retention_is_off_unless_a_number_of_days_is_given() {
    let config = Config::from_env(&env(&[])).unwrap();
    assert_eq!(config.retention.days, None);
    assert_eq!(config.retention.interval_secs, Duration::from_secs(3_600));
    let config = Config::from_env(&env(&[
        ("DARKROOM_RETENTION_DAYS", "30"),
        ("DARKROOM_RETENTION_INTERVAL_SECS", "60"),
    ]))
    .unwrap();
    assert_eq!(config.retention.days, Some(30));
    assert_eq!(config.retention.interval_secs, Duration::from_secs(60));
    for (var, bad) in [
        ("DARKROOM_RETENTION_DAYS", "0"),
        ("DARKROOM_RETENTION_DAYS", "-1"),
        ("DARKROOM_RETENTION_DAYS", "a month"),
        ("DARKROOM_RETENTION_INTERVAL_SECS", "0"),
    ] {
        let e = Config::from_env(&env(&[(var, bad)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(var), "{var}={bad}: {e}");
    }
}

#[test]
fn roles_decide_whether_workers_run() {
    let roles = |raw: &str| Config::from_env(&env(&[("DARKROOM_ROLES", raw)])).unwrap();
    assert!(Config::default().runs_workers() && Config::default().roles.api);
    let api = roles("api");
    assert!(api.roles.api && !api.runs_workers());
    let workers = roles(" Workers ");
    assert!(!workers.roles.api && workers.runs_workers());
    assert_eq!(roles("workers,api").roles, super::Roles::default());
    let off = Config::from_env(&env(&[("DARKROOM_WORKERS", "false")])).unwrap();
    assert!(
        !off.runs_workers(),
        "DARKROOM_WORKERS=false still turns the workers off"
    );
}
