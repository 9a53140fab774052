//! The pipeline runner behind `llmembed` and `cargo xtask`: parses a pipeline file into a
//! validated [`Plan`], keys every stage by the content of what it reads, and runs only what is
//! not cached. It knows stages only through [`registry::StageKind`]; it knows nothing about
//! models.

pub mod apply;
pub mod bench_serve;
pub mod cache;
pub mod cli;
pub mod console;
pub mod dag;
mod execute;
pub mod gc;
pub mod lock;
pub mod params;
pub mod pipeline;
pub mod predict;
pub mod preimage;
pub mod registry;
pub mod remote;
pub mod report;
pub mod rss;
pub mod runner;
pub mod serve;
pub mod show;
pub mod slurm;
pub mod status;
pub mod sync;
pub mod tools;
pub mod verify;
pub mod version;

pub use pipeline::Plan;
