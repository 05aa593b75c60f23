//! The workspace's real binaries, built once per test process.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of a workspace binary, building the binaries first (once) with
/// the profile the tests were built with.
pub fn path(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // Installed binaries (`weft demo` sets this to its own directory):
        // use them as they are.
        if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
            return PathBuf::from(dir);
        }
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
        cmd.args(["build", "--quiet", "--workspace"]);
        if release {
            // The benchmark harness: release binaries only, not every test.
            cmd.args(["--release", "--bins"]);
        } else {
            // The same selection as `cargo test --workspace --all-targets`
            // (the README's test command) resolves the same features, so
            // under it this build is a no-op; a narrower one (`-p ... --bins`)
            // would rebuild dozens of crates with other features.
            cmd.arg("--all-targets");
        }
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        profile_dir
    });
    let p = dir.join(name);
    assert!(p.exists(), "{} does not exist after building", p.display());
    p
}
