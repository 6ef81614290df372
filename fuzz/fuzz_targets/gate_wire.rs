//! A hostile guest client's bytes (and fds) against one client service of vmsilo-gate, whose
//! compositor is the in-process fake of `vmsilo_gate::testing` offering allowed and hidden
//! globals: see `vmsilo_gate::fuzzing` for the input format.
//!
//! Checked: nothing panics; after the client shuts down its side the service ends (no hang,
//! no spin).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmsilo_gate::fuzzing::run(data);
});
