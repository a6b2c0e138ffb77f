//! Fuzzes the reader of a job's `config` (`JobConfig::load`) with arbitrary
//! bytes: both layouts (backy 2.1's source mapping and 2.5's `{source: ...}`),
//! every source type, quoted numbers, unknown keys, binary junk.
//!
//! Per input: loading never panics; when it succeeds, the config written back
//! (`to_yaml`, what `init` stores) loads again to the same config.

#![no_main]

use backy::config::JobConfig;
use libfuzzer_sys::fuzz_target;

#[path = "../common/scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let path = scratch::file("config", data);
    if let Ok(config) = JobConfig::load(&path) {
        let again = scratch::file("config-again", config.to_yaml().as_bytes());
        let reloaded = JobConfig::load(&again).expect("a config backy wrote loads again");
        assert_eq!(reloaded.to_yaml(), config.to_yaml());
    }
});
