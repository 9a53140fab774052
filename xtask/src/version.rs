//! What `--version` prints and `run.json` records: the crate version, the git commit the binary
//! was built from, and the CPU kernels extraction will use on this machine.

use std::sync::OnceLock;

/// The git commit of the build (`-modified` when the work tree had changes), or `unknown`.
pub const GIT_COMMIT: &str = env!("LLMEMBED_GIT_COMMIT");

/// `0.1.0 (commit 0123456789ab)`.
pub const SHORT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LLMEMBED_GIT_COMMIT"),
    ")"
);

/// The short version, then the target and the kernels this CPU gets, a line each.
pub fn long() -> &'static str {
    static LONG: OnceLock<String> = OnceLock::new();
    LONG.get_or_init(|| {
        format!(
            "{SHORT}\ntarget: {}-{}\ncpu: {}\nkernels: {}",
            std::env::consts::ARCH,
            std::env::consts::OS,
            cpu_name(),
            llmembed_kernels::in_use(),
        )
    })
}

/// The CPU's model name as the kernel reports it (`unknown` where `/proc/cpuinfo` has none).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
