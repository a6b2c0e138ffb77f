//! Shared harness for integration tests: real filesystems, the real binary.
//!
//! Include it from a test file with `mod util;` and `use util::*;`. Every
//! test gets its own temporary directory and, where it asks for one, its own
//! loop-mounted filesystem ([`TestFs`]), so tests run in parallel without
//! sharing paths.
//!
//! Skip rule: when a test cannot run here (not root, a tool or the Python
//! peer missing), the constructor prints `skipping: <why>` and returns `None`
//! (see [`require_fs!`]). With `CI=true` it panics instead, so that a green CI
//! run means the real parts ran.
//!
//! One file per concern, all re-exported here:
//! - `command`: running the binary and other commands ([`backy`], [`run`],
//!   [`Run`]), system tools, the skip rule;
//! - `testfs`: test filesystems and block devices ([`TestFs`], [`FsKind`],
//!   [`TestBlockDevice`], [`require_fs!`]);
//! - `extents`: allocated and exclusive bytes ([`exclusive_bytes`]), reflinks;
//! - `content`: test data and comparisons ([`pattern_bytes`], [`write_file`],
//!   [`assert_same_content`]);
//! - `python`: the Python backy 2.1.5 peer ([`python_backy`]);
//! - [`ceph`]: a throw-away Ceph cluster per test (used by path, `util::ceph`).

// Each test binary (tests/*.rs) compiles its own copy of util and uses only
// the part it needs, so what one binary leaves unused is used by another:
// dead_code is allowed per submodule (and unused_imports per re-export)
// instead of for the whole harness. An item no binary uses still shows up
// when these allows are removed and `cargo build --tests` is run.
#[allow(dead_code)]
pub mod ceph;
#[allow(dead_code)]
mod command;
#[allow(dead_code)]
pub mod consul;
#[allow(dead_code)]
mod content;
#[allow(dead_code)]
mod extents;
#[allow(dead_code)]
pub mod faulty;
#[allow(dead_code)]
mod python;
#[allow(dead_code)]
mod testfs;

#[allow(unused_imports)]
pub use command::*;
#[allow(unused_imports)]
pub use content::*;
#[allow(unused_imports)]
pub use extents::*;
#[allow(unused_imports)]
pub use python::*;
#[allow(unused_imports)]
pub use testfs::*;
