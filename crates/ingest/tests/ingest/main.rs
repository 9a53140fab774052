//! The ingest stage's tests, by topic.

mod common;
mod datasets;
mod formats;
mod hub;
mod refused;
mod unlabelled;
