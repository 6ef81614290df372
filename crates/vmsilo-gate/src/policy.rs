//! The classified allowlist of globals a guest client may see and bind. Sans-IO.
//!
//! (Skeleton: filled in by the policy work; the API below is what the rest of the gate uses.)

/// Which globals a guest may see, at which version.
#[derive(Debug, Clone, Default)]
pub struct Policy {}

impl Policy {
    /// The version offered to guests for `interface` (capped at `compositor_version`), or
    /// `None` when the global is hidden.
    pub fn offered(&self, interface: &str, compositor_version: u32) -> Option<u32> {
        let _ = (interface, compositor_version);
        None
    }
}
