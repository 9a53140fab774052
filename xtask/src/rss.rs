//! Peak resident memory of one stage. Stages run in the runner's process, one at a time, so the
//! process's high-water mark (Linux `VmHWM`), reset before the stage starts, is the stage's peak.
//! Linux resets it when "5" is written to `/proc/self/clear_refs`; where that file cannot be
//! written (another OS, a locked-down /proc), nothing is recorded rather than a figure that would
//! also count the stages before.

/// Resets the high-water mark; `true` when a peak read afterwards belongs to what follows.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident set size in bytes since the last [`reset_peak`] (Linux `VmHWM`).
pub fn peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Peak RSS for humans: `812 MB`, `3.41 GB`.
pub fn human(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb < 1000.0 {
        format!("{mb:.0} MB")
    } else {
        format!("{:.2} GB", mb / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_a_large_allocation_and_resets() {
        if !reset_peak() {
            // Not Linux, or /proc/self/clear_refs is not writable: nothing is recorded.
            assert!(cfg!(not(target_os = "linux")) || peak_bytes().is_some());
            return;
        }
        let before = peak_bytes().unwrap();
        let big = vec![1u8; 256 << 20];
        std::hint::black_box(&big);
        let during = peak_bytes().unwrap();
        assert!(during >= before + (200 << 20), "{before} -> {during}");
        drop(big);
        assert!(reset_peak());
        let after = peak_bytes().unwrap();
        assert!(
            after + (200 << 20) <= during,
            "{during} -> {after} after the reset"
        );
        assert_eq!(human(812_000_000), "812 MB");
        assert_eq!(human(3_410_000_000), "3.41 GB");
    }
}
