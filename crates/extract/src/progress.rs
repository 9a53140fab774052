//! What `status` shows of an extraction shared by several processes: per plan with claims,
//! shards done / claimed (host, pid, for how long, texts/s from the heartbeats) / left.

use std::fs;
use std::path::Path;

use llmembed_core::Result;

use crate::claims::{self, CLAIMS_DIR};
use crate::store::{plan_files, plan_progress};

/// Lines for every plan in `store_dir` (the extract kind's store folder) that has claims.
pub(crate) fn lines(store_dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(store_dir) else {
        return Ok(out);
    };
    let mut folders: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    folders.sort();
    for dir in folders {
        if !dir.join(CLAIMS_DIR).is_dir() {
            continue;
        }
        for (id, path) in plan_files(&dir)? {
            let held = claims::list(&dir, &id);
            if held.is_empty() {
                continue;
            }
            let (done, total) = plan_progress(&dir, &id, &path)?;
            let claimed = held.iter().filter(|c| !c.stale).count();
            let stale = held.len() - claimed;
            let fingerprint = dir.file_name().unwrap_or_default().to_string_lossy();
            out.push(format!(
                "extract store {fingerprint} plan {id}: {done} of {total} shards done, {claimed} claimed{}, {} left",
                if stale > 0 { format!(" ({stale} stale, to be taken over)") } else { String::new() },
                total.saturating_sub(done + claimed)
            ));
            let now = claims::now();
            for c in held {
                out.push(format!(
                    "  shard {}: {}host {} pid {}, claimed {:.0}s ago, heartbeat {:.0}s ago, {} texts; worker {:.1} texts/s",
                    c.index,
                    if c.stale { "STALE " } else { "" },
                    c.info.host,
                    c.info.pid,
                    now - c.info.since,
                    now - c.info.heartbeat,
                    c.info.texts,
                    c.info.rate(),
                ));
            }
        }
    }
    Ok(out)
}
