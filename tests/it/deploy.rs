//! `deploy/`: the systemd unit passes `systemd-analyze verify` without a warning, and the
//! environment files of the unit and of the cluster example name only variables darkroom
//! knows and make a configuration it accepts. (The cluster example's processes, two
//! instances on one PostgreSQL database and one S3 bucket, run natively in `cluster`.)

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::harness::BIN;
use darkroom::config::Config;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `NAME=value` lines; comments and blank lines skipped.
fn env_file(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not NAME=value: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: this machine kind has it (Debian's systemd package)"
    );
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("darkroom.env");
    std::fs::copy(Path::new(ROOT).join("deploy/darkroom.env.example"), &env).unwrap();
    // The unit as installed, pointing at this build's binary and a copy of the env file.
    let unit = std::fs::read_to_string(Path::new(ROOT).join("deploy/darkroom.service"))
        .unwrap()
        .replace(
            "ExecStart=/usr/local/bin/darkroom",
            &format!("ExecStart={BIN}"),
        )
        .replace(
            "EnvironmentFile=/etc/darkroom/darkroom.env",
            &format!("EnvironmentFile={}", env.display()),
        );
    assert!(unit.contains(BIN), "ExecStart is where the README says");
    let path = dir.path().join("darkroom.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("systemd-analyze verify: exit {}, {stderr:?}", out.status);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
}

#[test]
fn the_env_files_name_only_known_variables_and_load() {
    for file in ["deploy/darkroom.env.example", "deploy/cluster/cluster.env"] {
        let env = env_file(&Path::new(ROOT).join(file));
        assert!(
            Config::unknown_darkroom_vars(&env).is_empty(),
            "{file}: unknown {:?}",
            Config::unknown_darkroom_vars(&env)
        );
        let config = Config::from_env(&env).unwrap_or_else(|e| panic!("{file}: {e}"));
        if file.contains("cluster") {
            assert!(config.database_url().starts_with("postgres://"), "{file}");
            assert!(config.storage.s3.is_some(), "{file}: the bucket is S3");
        }
    }
}
