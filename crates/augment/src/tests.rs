use std::path::{Path, PathBuf};

use llmembed_core::{Env, Input, Stage, TextTable, read_text_table, seeded_rng};

use super::*;
use crate::eda::{self, Op};
use crate::wordnet::WordNet;

/// The WordNet folder for tests (`LLMEMBED_WORDNET_DIR`, default /usr/share/wordnet), or `None`
/// when the database is absent: the test skips, or fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`.
fn wordnet_dir() -> Option<PathBuf> {
    llmembed_testkit::needs("WordNet", llmembed_testkit::wordnet_dir())
}

fn load_wn() -> Option<WordNet> {
    wordnet_dir().map(|d| WordNet::load(&d).expect("load WordNet"))
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

const FOX: &str = "the quick brown fox jumps over the lazy dog";

#[test]
fn wordnet_reader_finds_synonyms_through_morphy_and_exceptions() {
    let Some(wn) = load_wn() else { return };
    let car = wn.synonyms("car").unwrap();
    for s in [
        "auto",
        "automobile",
        "machine",
        "motorcar",
        "railcar",
        "gondola",
    ] {
        assert!(car.contains(&s.to_string()), "{s} not in {car:?}");
    }
    assert!(!car.contains(&"car".to_string()));
    // Regular plural through the detachment rules, irregular form through noun.exc / verb.exc.
    assert!(
        wn.synonyms("cars")
            .unwrap()
            .contains(&"automobile".to_string())
    );
    assert!(wn.synonyms("geese").unwrap().contains(&"goose".to_string()));
    assert!(wn.synonyms("ran").unwrap().contains(&"operate".to_string()));
    // Multi-word lemmas come with spaces; adjective markers are stripped.
    assert!(car.contains(&"railway car".to_string()), "{car:?}");
    assert!(
        wn.synonyms("abounding")
            .unwrap()
            .contains(&"galore".to_string())
    );
    assert!(wn.synonyms("qwzxv").unwrap().is_empty());
}

#[test]
fn clean_text_matches_eda_get_only_chars() {
    assert_eq!(
        eda::clean_text("Wall St. Bears Claw Back Into the Black (Reuters)\tdon't re-enter #36;5"),
        "wall st bears claw back into the black reuters dont re enter"
    );
    assert_eq!(eda::key_of("(Reuters),"), "reuters");
    assert_eq!(eda::replace_word("(Stocks),", "shares"), "(Shares),");
    assert_eq!(
        eda::replace_word("stocks", "motor vehicle"),
        "motor vehicle"
    );
}

#[test]
fn synonym_replacement_on_a_fixed_text() {
    let Some(wn) = load_wn() else { return };
    let mut rng = seeded_rng(7, "test-synonym");
    let out = eda::synonym_replacement(&words(FOX), 2, &wn, &mut rng).unwrap();
    // fox -> befuddle (verb synset confuse/throw/fox/befuddle), lazy -> faineant; stop words
    // ("the", "over") stay.
    assert_eq!(
        out.join(" "),
        "the quick brown befuddle jumps over the faineant dog"
    );
}

#[test]
fn random_insertion_on_a_fixed_text() {
    let Some(wn) = load_wn() else { return };
    let mut rng = seeded_rng(7, "test-insert");
    let out = eda::random_insertion(&words(FOX), 2, &wn, &mut rng).unwrap();
    // "browned" (a synonym of brown) and "throw" (of fox) inserted at random positions.
    assert_eq!(
        out.join(" "),
        "the quick brown browned fox jumps over the lazy throw dog"
    );
}

#[test]
fn random_swap_on_a_fixed_text() {
    let mut rng = seeded_rng(7, "test-swap");
    let out = eda::random_swap(&words(FOX), 2, &mut rng);
    // quick <-> fox, then quick <-> the (second one).
    assert_eq!(out.join(" "), "the fox brown the jumps over quick lazy dog");
    let mut sorted_in = words(FOX);
    let mut sorted_out = out.clone();
    sorted_in.sort();
    sorted_out.sort();
    assert_eq!(sorted_in, sorted_out, "a swap keeps the multiset of words");
}

#[test]
fn random_deletion_on_a_fixed_text() {
    let mut rng = seeded_rng(7, "test-delete");
    let out = eda::random_deletion(&words(FOX), 0.3, &mut rng);
    // jumps, over and dog dropped; the order of the rest kept.
    assert_eq!(out.join(" "), "the quick brown fox the lazy");
    // A one-word text is kept; deleting everything keeps one word.
    assert_eq!(
        eda::random_deletion(&words("alone"), 1.0, &mut rng),
        words("alone")
    );
    assert_eq!(
        eda::random_deletion(&words("a b c"), 1.0, &mut rng).len(),
        1
    );
}

#[test]
fn stop_words_are_never_replaced() {
    let Some(wn) = load_wn() else { return };
    // Every word but "market" is a stop word, and most of them have WordNet synsets ("i",
    // "a", "be", "do", "will", "can", "up", "out", "here" ...).
    let text = words("i will be up here and a can do it out there market");
    for seed in 0..50 {
        let mut rng = seeded_rng(seed, "stop");
        let out = eda::synonym_replacement(&text, 20, &wn, &mut rng).unwrap();
        assert_eq!(&out[..12], &text[..12], "seed {seed}: {out:?}");
        assert_ne!(
            out[12..].join(" "),
            "market",
            "seed {seed}: the content word is replaced"
        );
        let mut rng = seeded_rng(seed, "stop-insert");
        // One insertion: its source can only be "market" (a second one may also draw the
        // inserted synonym, as in EDA).
        let ins = eda::random_insertion(&text, 1, &wn, &mut rng).unwrap();
        let market = wn.synonyms("market").unwrap().join(" ");
        let inserted: Vec<&String> = ins.iter().filter(|w| !text.contains(w)).collect();
        for w in inserted {
            assert!(
                market.contains(w.as_str()),
                "seed {seed}: inserted {w} is not a synonym of market"
            );
        }
    }
    // Only stop words: nothing to replace.
    assert!(!eda::applicable(Op::Synonym, &words("it is what it is"), &wn).unwrap());
}

// ---------------------------------------------------------------------------------------------
// The stage end to end

fn env(dir: &Path, wordnet: PathBuf) -> (Env, Params) {
    let env = Env {
        data_dir: dir.to_path_buf(),
        models_dir: dir.to_path_buf(),
        pipeline_dir: dir.to_path_buf(),
        seed: 0,
        quiet: true,
    };
    let params = Params {
        wordnet_dir: wordnet,
        ..Params::default()
    };
    (env, params)
}

fn names() -> Vec<String> {
    vec!["world".into(), "sports".into()]
}

/// An input artifact with 40 train rows and 3 test rows.
fn input(dir: &Path) -> Input {
    let base = [
        "Stocks rallied as investors cheered strong earnings from technology companies",
        "The team won the championship after a dramatic final match in overtime",
        "Government officials announced new policies to reduce carbon emissions",
        "Oil prices climbed sharply amid concerns about supply disruptions",
        "ok",
    ];
    let n = 40;
    let train = TextTable::new(
        (0..n).map(|i| format!("tr{i}")).collect(),
        (0..n)
            .map(|i| format!("{} {i}", base[i % base.len()]))
            .collect(),
        (0..n).map(|i| (i % 2) as i64).collect(),
        names(),
    );
    let test = TextTable::new(
        vec!["te0".into(), "te1".into(), "te2".into()],
        vec![
            "Rain is expected".into(),
            "Quarterly profits fell".into(),
            "x".into(),
        ],
        vec![0, 1, 0],
        names(),
    );
    llmembed_testkit::text_input(
        &dir.join("in"),
        "ingest",
        &[("train", &train), ("test", &test)],
    )
}

fn run_stage(dir: &Path, name: &str, params: &Params, input: &Input) -> Result<(PathBuf, Summary)> {
    let out = dir.join(name);
    let inputs = std::slice::from_ref(input);
    let summary =
        llmembed_testkit::run_stage_at::<Augment>(params, inputs, 42, &out, &dir.join("store"))?;
    Ok((out, summary))
}

#[test]
fn stage_adds_labelled_augmented_rows_and_keeps_test_unchanged() {
    let Some(wn) = wordnet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut params) = env(tmp.path(), wn);
    params.fraction = 0.5;
    params.copies = 2;
    let input = input(tmp.path());
    let (out, summary) = run_stage(tmp.path(), "a", &params, &input).unwrap();

    let src = read_text_table(&input.split("train").unwrap()).unwrap();
    let aug = read_text_table(&out.join("train.parquet")).unwrap();
    assert_eq!(aug.label_names, names());
    // Originals first, unchanged.
    assert_eq!(aug.ids[..40], src.ids[..]);
    assert_eq!(aug.texts[..40], src.texts[..]);
    assert!(aug.source_ids[..40].iter().all(Option::is_none));
    // 20 chosen rows; the 4 "ok N" rows among them are too short ("ok" has synonyms, but the
    // digit is cleaned away so one word remains: swap/delete cannot act, synonym/insert can).
    let added = aug.len() - 40;
    assert!(added > 0 && added <= 40, "{added}");
    let mut last_source = 0usize;
    for i in 40..aug.len() {
        let source = aug.source_ids[i].as_deref().unwrap();
        let s = src.ids.iter().position(|id| id == source).unwrap();
        assert!(s >= last_source, "augmented rows ordered by source row");
        last_source = s;
        assert!(aug.ids[i] == format!("{source}-aug1") || aug.ids[i] == format!("{source}-aug2"));
        assert_eq!(aug.labels[i], src.labels[s]);
        let ops = aug.augment_ops[i].as_deref().unwrap();
        assert!(
            ["synonym", "insert", "swap", "delete"].contains(&ops),
            "{ops}"
        );
        assert_ne!(aug.texts[i], eda::clean_text(&src.texts[s]));
        assert_eq!(
            aug.texts[i],
            eda::clean_text(&aug.texts[i]),
            "clean: true output is cleaned"
        );
    }
    assert_eq!(summary.rows_out, aug.len() + 3);
    // Test split: byte for byte.
    assert_eq!(
        std::fs::read(out.join("test.parquet")).unwrap(),
        std::fs::read(input.split("test").unwrap()).unwrap()
    );
}

#[test]
fn stage_is_deterministic_and_fraction_picks_nested_rows() {
    let Some(wn) = wordnet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut params) = env(tmp.path(), wn);
    params.per_copy = PerCopy::All;
    params.clean = false;
    let input = input(tmp.path());
    let (a, _) = run_stage(tmp.path(), "a", &params, &input).unwrap();
    let (b, _) = run_stage(tmp.path(), "b", &params, &input).unwrap();
    assert_eq!(
        std::fs::read(a.join("train.parquet")).unwrap(),
        std::fs::read(b.join("train.parquet")).unwrap()
    );
    params.fraction = 0.6;
    let (c, _) = run_stage(tmp.path(), "c", &params, &input).unwrap();
    let small = read_text_table(&a.join("train.parquet")).unwrap();
    let large = read_text_table(&c.join("train.parquet")).unwrap();
    assert!(large.len() > small.len());
    for i in 40..small.len() {
        let j = large
            .ids
            .iter()
            .position(|id| *id == small.ids[i])
            .expect("nested selection");
        assert_eq!(
            large.texts[j], small.texts[i],
            "same text whatever the fraction"
        );
        assert_eq!(large.augment_ops[j], small.augment_ops[i]);
    }
    // clean: false keeps the case of words.
    assert!(
        small.texts[40..]
            .iter()
            .any(|t| t.chars().any(char::is_uppercase))
    );
    // A different seed gives different augmentations.
    params.fraction = 0.2;
    params.seed = Some(1);
    let (d, _) = run_stage(tmp.path(), "d", &params, &input).unwrap();
    assert_ne!(
        std::fs::read(a.join("train.parquet")).unwrap(),
        std::fs::read(d.join("train.parquet")).unwrap()
    );
}

#[test]
fn texts_too_short_are_left_alone_and_counted() {
    let Some(wn) = wordnet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut params) = env(tmp.path(), wn);
    params.fraction = 1.0;
    // Only swap: the one-word rows ("ok N" cleans to "ok") cannot be changed.
    params.ops = OpRates {
        synonym: 0.0,
        insert: 0.0,
        swap: 0.1,
        delete: 0.0,
    };
    let input = input(tmp.path());
    let (out, summary) = run_stage(tmp.path(), "a", &params, &input).unwrap();
    let aug = read_text_table(&out.join("train.parquet")).unwrap();
    // 32 rows can be swapped; in one of them the swap exchanged the two "the"s, so that copy
    // is unchanged and dropped.
    assert_eq!(aug.len(), 40 + 31, "{:?}", summary.notes);
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n == "1 copies unchanged by their operations (dropped)"),
        "{:?}",
        summary.notes
    );
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n == "8 chosen rows too short to change (left as they are)"),
        "{:?}",
        summary.notes
    );
    assert!(
        aug.augment_ops[40..]
            .iter()
            .all(|o| o.as_deref() == Some("swap"))
    );
}

#[test]
fn missing_wordnet_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-wordnet");
    let (env, params) = env(tmp.path(), missing.clone());
    let err = Augment::externals(&params, &env).unwrap_err().to_string();
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("wordnet-base"),
        "{err}"
    );
    let input = input(tmp.path());
    let err = run_stage(tmp.path(), "a", &params, &input)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-wordnet") && err.contains("apt-get install -y wordnet-base"),
        "{err}"
    );
}

#[test]
fn externals_list_the_database_files() {
    let Some(wn) = wordnet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (env, params) = env(tmp.path(), wn.clone());
    let ext = Augment::externals(&params, &env).unwrap();
    assert_eq!(ext.len(), 12);
    assert!(ext.contains(&llmembed_core::External::File {
        name: "wordnet/data.noun".into(),
        path: wn.join("data.noun"),
    }));
}

#[test]
fn params_parse_with_defaults_and_are_checked() {
    let p: Params = serde_json::from_str(r#"{"ops": {"swap": 0.2}}"#).unwrap();
    assert_eq!(p.fraction, 0.2);
    assert_eq!(p.copies, 1);
    assert_eq!(p.ops.swap, 0.2);
    assert_eq!(p.ops.synonym, 0.1);
    assert_eq!(p.per_copy, PerCopy::One);
    let err = serde_json::from_str::<Params>(r#"{"fractoin": 0.2}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `fractoin`"), "{err}");
    let err = Augment::check(&Params {
        fraction: 1.5,
        ..Params::default()
    })
    .unwrap_err()
    .to_string();
    assert_eq!(err, "param `fraction`: must be in [0, 1]");
    let err = Augment::check(&Params {
        copies: 0,
        ..Params::default()
    })
    .unwrap_err()
    .to_string();
    assert_eq!(err, "param `copies`: must be in 1..=1000");
    let zero = OpRates {
        synonym: 0.0,
        insert: 0.0,
        swap: 0.0,
        delete: 0.0,
    };
    let err = Augment::check(&Params {
        ops: zero,
        ..Params::default()
    })
    .unwrap_err()
    .to_string();
    assert_eq!(err, "param `ops`: every operation has rate 0");
    assert!(Augment::check(&Params::default()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Real text: a sample of AG News

#[test]
fn augments_an_ag_news_sample() {
    let Some(wn) = wordnet_dir() else { return };
    let Some((texts, labels)) = llmembed_testkit::needs(
        "AG News",
        llmembed_testkit::read_ag_news("train", usize::MAX),
    ) else {
        return;
    };
    let n = 2000;
    let names: Vec<String> = ["World", "Sports", "Business", "Sci/Tech"]
        .map(String::from)
        .to_vec();
    let train = TextTable::new(
        (0..n).map(|i| format!("ag{i}")).collect(),
        texts[..n].to_vec(),
        labels[..n].to_vec(),
        names.clone(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let input =
        llmembed_testkit::text_input(&tmp.path().join("in"), "ingest", &[("train", &train)]);
    let (_, params) = env(tmp.path(), wn);
    let start = std::time::Instant::now();
    let (out, summary) = run_stage(tmp.path(), "a", &params, &input).unwrap();
    let aug = read_text_table(&out.join("train.parquet")).unwrap();
    eprintln!(
        "AG News {n} rows, default params: {:?} in {:.2?}",
        summary.notes,
        start.elapsed()
    );
    for i in n..n + 4 {
        eprintln!(
            "  [{}] {}",
            aug.augment_ops[i].as_deref().unwrap(),
            aug.texts[i]
        );
    }
    // 400 rows chosen; news sentences are long enough for every operation.
    assert_eq!(
        summary.notes[1],
        "0 chosen rows too short to change (left as they are)"
    );
    assert!(aug.len() > n + 380 && aug.len() <= n + 400, "{}", aug.len());
    let mut counts = std::collections::HashMap::new();
    for ops in &aug.augment_ops[n..] {
        *counts.entry(ops.clone().unwrap()).or_insert(0usize) += 1;
    }
    eprintln!("  ops: {counts:?}");
    assert_eq!(counts.len(), 4, "all four operations drawn: {counts:?}");
    for i in n..aug.len() {
        let src = aug.source_ids[i].as_deref().unwrap();
        let s: usize = src.trim_start_matches("ag").parse().unwrap();
        assert_eq!(aug.labels[i], labels[s]);
        assert_eq!(aug.label_names, names);
    }
}

#[test]
fn unlabelled_rows_are_kept_but_never_augmented() {
    let Some(wn) = wordnet_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut params) = env(tmp.path(), wn);
    params.fraction = 0.5;
    let full = read_text_table(&input(tmp.path()).split("train").unwrap()).unwrap();
    // Every third row without a label, and the same table with those rows left out.
    let mut mixed = full.clone();
    for i in (0..mixed.len()).step_by(3) {
        mixed.labels[i] = UNLABELLED;
    }
    let keep: Vec<usize> = (0..full.len()).filter(|i| i % 3 != 0).collect();
    let only_labelled = TextTable::new(
        keep.iter().map(|&i| full.ids[i].clone()).collect(),
        keep.iter().map(|&i| full.texts[i].clone()).collect(),
        keep.iter().map(|&i| full.labels[i]).collect(),
        names(),
    );
    let run = |name: &str, train: &TextTable| {
        let input = llmembed_testkit::text_input(
            &tmp.path().join(format!("in-{name}")),
            "ingest",
            &[("train", train)],
        );
        let (out, summary) = run_stage(tmp.path(), name, &params, &input).unwrap();
        (
            read_text_table(&out.join("train.parquet")).unwrap(),
            summary,
        )
    };
    let (mixed_out, summary) = run("mixed", &mixed);
    let (labelled_out, _) = run("labelled", &only_labelled);
    assert_eq!(mixed_out.texts[..mixed.len()], mixed.texts[..]);
    assert_eq!(mixed_out.labels[..mixed.len()], mixed.labels[..]);
    // The same rows chosen among the labelled ones, with the same copies.
    let copies = |t: &TextTable, from: usize| (t.ids[from..].to_vec(), t.texts[from..].to_vec());
    assert_eq!(
        copies(&mixed_out, mixed.len()),
        copies(&labelled_out, only_labelled.len())
    );
    assert!(mixed_out.len() > mixed.len());
    assert!(
        mixed_out.labels[mixed.len()..]
            .iter()
            .all(|&l| l != UNLABELLED)
    );
    assert!(
        summary
            .notes
            .contains(&"14 train rows without labels, not augmented".to_string()),
        "{:?}",
        summary.notes
    );
}

#[test]
fn applied_to_new_texts_the_stage_passes_them_through() {
    let tmp = tempfile::tempdir().unwrap();
    let (env, params) = env(tmp.path(), PathBuf::from("/nonexistent"));
    let fitted = input(tmp.path());
    let apply_env = llmembed_core::ApplyEnv {
        env,
        store_dir: tmp.path().join("store"),
    };
    let apply = Augment::applier(&params, &fitted, &apply_env)
        .unwrap()
        .unwrap();
    let new = TextTable::new(
        vec!["n0".into()],
        vec!["Stocks rallied as investors cheered".into()],
        vec![UNLABELLED],
        names(),
    );
    let rows = llmembed_core::Rows::Text(new);
    assert_eq!(apply.apply(std::slice::from_ref(&rows)).unwrap(), rows);
    let msg = apply.apply(&[rows.clone(), rows]).unwrap_err().to_string();
    assert!(
        msg.contains("expected one table of texts, got [text, text]"),
        "{msg}"
    );
}
