//! The shipped systemd unit is valid for systemd itself.

use std::process::Command;

use e2e::{enforcer_bin, run};

#[test]
fn systemd_unit_verifies() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/systemd/egress-enforcer.service");
    let text = std::fs::read_to_string(&unit).expect("the unit file");
    for key in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "ReadWritePaths=/sys/fs/bpf /sys/fs/cgroup",
    ] {
        assert!(text.contains(key), "{} lacks {key}", unit.display());
    }
    // Verify against the binary just built, so that ExecStart points at something real.
    let dir = std::env::temp_dir().join(format!("ee-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("egress-enforcer.service");
    let bin = enforcer_bin();
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/egress-enforcer", &bin.display().to_string()),
    )
    .expect("unit copy");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let _ = std::fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{report}"
    );
    // Warnings (unknown keys, bad values) do not fail verify: none may be printed.
    let warnings: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("egress-enforcer.service"))
        .collect();
    assert!(
        warnings.is_empty(),
        "systemd-analyze verify warned:\n{report}"
    );
}
