//! The pipeline runner behind `cargo xtask`: parses a pipeline file into a validated [`Plan`],
//! keys every stage by the content of what it reads, and runs only what is not cached. It knows
//! stages only through [`registry::StageKind`]; it knows nothing about models.

pub mod cache;
pub mod dag;
pub mod gc;
pub mod out;
pub mod pipeline;
pub mod registry;
pub mod runner;
pub mod status;
pub mod tools;
pub mod verify;

pub use pipeline::Plan;
