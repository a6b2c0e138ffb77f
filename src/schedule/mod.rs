//! The scheduler's pure logic: its configuration, the spread of jobs over the
//! day, ideal run times with catch-up, the backoff after failures, and
//! retention as a plan.
//! Everything here takes the time as an argument, so tests run days in
//! milliseconds.

pub mod backoff;
pub mod config;
pub mod plan;
pub mod retention;
pub mod spread;
