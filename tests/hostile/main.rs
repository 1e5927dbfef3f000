//! Hostile input and faults (issue 11): what a careless or hostile user
//! meets through the CLI. Every test here failed on the main branch before
//! the fix it pins: an abort, a silent wrong result or lost work became one
//! clear error (exit 1), an exact resume, or a refusal.
//!
//! One binary, one module per area, so the suite links once.

#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod data;
mod limits;
mod model;
mod training;
