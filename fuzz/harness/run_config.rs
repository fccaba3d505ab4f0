//! The run configuration parser (TOML into a checked `RunConfig`).

use std::path::Path;

use mura_train::RunConfig;

pub fn run(bytes: &[u8], _scratch: &Path) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(config) = RunConfig::parse(text) {
        // A parsed config round-trips through its own TOML.
        let again = config.to_toml().expect("a parsed config serialises");
        let back = RunConfig::parse(&again).expect("its own TOML parses");
        assert_eq!(back.to_toml().expect("serialises"), again);
    }
}
