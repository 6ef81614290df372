//! Sizes and durations as users write them (`10G`, `300m`, `2s`, `500ms`): the `vmsilo-measure`
//! crate, re-exported here under its own name so the configuration's callers keep one path.

pub use vmsilo_measure::*;
