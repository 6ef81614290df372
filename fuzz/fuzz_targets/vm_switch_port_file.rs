//! vm-switch's port file parser on arbitrary text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_switch::port_file::PortConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = PortConfig::parse(text, "fuzz.port")
    {
        // Whatever parses must round-trip.
        let again = PortConfig::parse(&cfg.to_toml(), "fuzz.port").expect("round trip");
        assert_eq!(cfg, again);
    }
});
