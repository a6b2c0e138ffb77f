//! Fuzzes the reader of the scheduler configuration (`/etc/backy.conf`,
//! `schedule::config::Config::load`) with arbitrary bytes: globals, schedules
//! with intervals in every unit, jobs, quoted numbers, junk.
//!
//! Per input: loading never panics, and for a loaded config every job's
//! schedule is found by name and every interval is positive.

#![no_main]

use backy::schedule::config::Config;
use libfuzzer_sys::fuzz_target;

#[path = "../common/scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let path = scratch::file("backy.conf", data);
    if let Ok(config) = Config::load(&path) {
        for name in config.jobs.keys() {
            let schedule = config
                .schedule_of(name)
                .expect("every job of a loaded config has its schedule");
            for rule in schedule.tags.values() {
                assert!(rule.interval > 0, "a zero interval was accepted");
            }
        }
    }
});
