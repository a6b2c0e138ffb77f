//! The scheduler's pure logic: its configuration, the spread of jobs over the
//! day, ideal run times with catch-up and backoff, and retention as a plan.
//! Everything here takes the time as an argument, so tests run days in
//! milliseconds.

pub mod config;
pub mod plan;
pub mod retention;
pub mod spread;
