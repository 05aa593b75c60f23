//! The workspace's real binaries, built once per test process.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The binaries the end-to-end tests run.
pub const BINARIES: &[(&str, &str)] = &[
    ("weft-proxy", "weft-proxy"),
    ("weft-init", "weft-init"),
    ("weft-controller", "weft-controller"),
    ("weft-cli", "weft"),
];

/// The path of a workspace binary, building the binaries first (once) with
/// the profile the tests were built with.
pub fn path(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // Test binaries are in target/<profile>/deps, other binaries in
        // target/<profile>; the binaries we want are in target/<profile>.
        let exe = std::env::current_exe().expect("current exe");
        let mut profile_dir = exe.parent().expect("target dir").to_path_buf();
        if profile_dir.ends_with("deps") {
            profile_dir.pop();
        }
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bins"]);
        for (package, _) in BINARIES {
            cmd.args(["-p", package]);
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        profile_dir
    });
    let p = dir.join(name);
    assert!(p.exists(), "{} does not exist after building", p.display());
    p
}
