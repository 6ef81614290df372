//! vmsilo's configuration model.
//!
//! This crate is sans-IO: it parses configuration text handed to it, validates it and derives
//! values from it, but never touches the file system, the network or the clock. Everything that
//! reads a value typed by a user (sizes such as `300m`, durations such as `2s`) goes through the
//! parsers here, so every vmsilo component accepts the same spellings.

#![forbid(unsafe_code)]

pub mod units;
