//! The `ingest` stage: reads a text-classification dataset and writes one
//! [`TextTable`](llmembed_core::TextTable) per split (`train.parquet`, `test.parquet`, ...).
//!
//! # Sources (exactly one of)
//!
//! * `dataset: <name>`: a named dataset. It is looked up first in the data directory
//!   ([`Env::data_dir`](llmembed_core::Env::data_dir), `../shared/data` by default): `<data_dir>/<name>/<split>.parquet` with
//!   class names in `<data_dir>/<name>/labels.txt` (one per line). This is the offline mechanism:
//!   put the files there and nothing is fetched. Only when `<data_dir>/<name>/` does not exist is
//!   the dataset taken from the Hugging Face hub (revision `main`, resolved to a commit), for the
//!   names this crate knows:
//!   * `ag_news` -> `fancyzhx/ag_news`, `data/{train,test}-00000-of-00001.parquet`, classes
//!     World, Sports, Business, Sci/Tech;
//!   * `sst2` -> `SetFit/sst2`, `{train,validation,test}.jsonl` (split `validation` is written as
//!     `dev`), classes negative, positive. This is the sentence-level SST-2 with labelled test
//!     rows (GLUE's `stanfordnlp/sst2` hides its test labels).
//! * `files: {train: a.csv, test: b.parquet}`: local files, by extension: `.parquet`/`.pq`,
//!   `.csv`, `.tsv`/`.tab` (header row required), `.jsonl`/`.ndjson` (one JSON object per line).
//!   Relative paths are resolved against the pipeline file's folder.
//! * `hub: {repo: org/name, revision: <sha or branch>, files: {train: path/in/repo, ...}}`: a hub
//!   dataset. A sha is the commit; a branch or tag is resolved to a commit by the hub (so
//!   `main` follows the hub), or from the hub cache's `refs/<revision>` under `HF_HUB_OFFLINE=1`
//!   or when the hub cannot be reached. Files are taken from the cache when present, downloaded
//!   otherwise (never offline). All of it through `llmembed-hub`.
//!
//! The hub cache is `hub_cache_dir` when given, else the Hugging Face environment's
//! (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`: the layout shared
//! with Python's `huggingface_hub`); `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` apply.
//!
//! # Params
//!
//! ```yaml
//! kind: ingest
//! params:
//!   dataset: ag_news          # or files: {...} or hub: {repo, revision, files}
//!   text_columns: [text]      # default [text]; several are joined with one space
//!   label_column: label       # default label; integer ids or class-name strings; null: no labels
//!   label_names: null         # default: labels.txt / known hub names / derived (see below)
//!   splits:                   # default {}: every split of the source, all rows
//!     train: {sample: {total: 2000}}     # class-balanced: total / n_classes of each class
//!     test:  {sample: {per_class: 125}}  # or omit `sample` for all rows
//!     new:   {unlabelled: true}          # a split without labels (never sampled)
//!   dedup: false              # drop rows whose (joined) text repeats an earlier row's
//!   seed: null                # overrides the pipeline seed
//!   hub_cache_dir: null       # hub cache folder (see above)
//! ```
//!
//! Label names, when neither given nor known: string labels give the sorted distinct values over
//! the read labelled splits; integer labels give `"0"..="max"`.
//!
//! # Splits without labels
//!
//! `label_column: null` (no split has labels) or `splits: {S: {unlabelled: true}}` (split `S`
//! has none; its label column, if any, is not read: GLUE's test splits store -1 there): every
//! row of such a split gets label [`UNLABELLED`](llmembed_core::UNLABELLED) (-1). The class
//! names still come from `label_names`, `labels.txt` or the labelled splits (with no labelled
//! split and no names given, ingest says so). Downstream stages carry such rows through and never
//! fit or score on them. An unlabelled split cannot be sampled: sampling is class-balanced, and
//! `check` refuses it rather than sample something else than what the param says.
//!
//! # Applied to new texts
//!
//! [`Ingest`]'s applier gives new texts (as `predict` and `serve` build them) the class names
//! of the ingested dataset, read from its `train.parquet` schema, and leaves the rows as they
//! are.
//!
//! # Output
//!
//! `<split>.parquet` with `id` = `<split>-<row index in the source file>` (0-based, counted
//! before dedup and sampling, so an id names the same source row whatever the sample), `text`,
//! `label` (index into the label names, stored in the schema metadata). Sampled rows keep the
//! source file's order. The same params and seed give the same bytes.
//!
//! # Refused input
//!
//! A split with no rows; a CSV/TSV row with more or fewer fields than the header (an empty line
//! included); a JSON Lines line that is not one JSON object; text that is not UTF-8; a text
//! column that is not strings (an all-numeric CSV column included); null, missing or empty text
//! or label; a label column that mixes integer ids with other values (unless the label names look
//! like integers), a non-integral float label, an id outside the label names, a name not among
//! them. Each error names the file, the 0-based data row (the row of the output ids) and the
//! field, and for CSV/TSV and JSON Lines the row's physical line(s) in the file, counted from 1
//! (a CSV header is line 1; a quoted line break starts a new line). Row checks that polars does
//! not do are made only when polars fails or leaves nulls, so well-formed files are read once.
//!
//! Externals: every local file read (split files, `labels.txt`) as [`External::File`](llmembed_core::External::File); for hub
//! data, the resolved commit as [`External::Value`](llmembed_core::External::Value) (`hub:<repo>`).
//!
//! # Modules
//!
//! `params` (the serde types and their checks), `source` (which files: data directory, local
//! files or hub), `hub` (hub files at a resolved commit), `read` (one file into a polars frame,
//! with row-located errors: `read::locate` finds a row's lines, `read::check` finds the bad
//! row), `columns` (texts and labels out of a frame), `sample` (class-balanced sampling),
//! `stage` (the [`Ingest`] stage that ties them together), `new_texts` (`predict`'s files: new
//! texts in, with an error per row that cannot be read as text, and classified rows out).

mod columns;
mod hub;
mod new_texts;
mod params;
mod read;
mod sample;
mod source;
mod stage;

pub use new_texts::{
    CLASSIFIED_COLUMNS, Classified, NewTexts, read_new_texts, read_new_texts_jsonl,
    write_classified,
};
pub use params::{HubSource, IngestParams, Sample, SplitSpec};
pub use stage::Ingest;
