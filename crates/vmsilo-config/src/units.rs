//! Sizes and durations as users write them (`10G`, `300m`, `2s`, `500ms`): the `vmsilo-measure`
//! crate, re-exported under the configuration's name so callers keep one path.

pub use vmsilo_measure::*;
