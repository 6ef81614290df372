//! Settings the host passes on the kernel command line (`/proc/cmdline`).

use std::time::Duration;

/// What the agent reads from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSettings {
    /// `vmsilo.autoshutdown=<seconds>`: power off after this long without a running command.
    pub autoshutdown: Option<Duration>,
    /// Parameters that look like ours but could not be used, as messages for the log.
    pub warnings: Vec<String>,
}

/// Parses the kernel command line. Unknown parameters are ignored; a bad
/// `vmsilo.autoshutdown` value is a warning and leaves the watchdog off. `0` also means off.
pub fn parse(cmdline: &str) -> KernelSettings {
    let mut s = KernelSettings::default();
    for word in cmdline.split_whitespace() {
        let Some(value) = word.strip_prefix("vmsilo.autoshutdown=") else {
            continue;
        };
        match value.parse::<u64>() {
            Ok(0) => s.autoshutdown = None,
            Ok(secs) if Duration::from_secs(secs) > vmsilo_config::units::MAX_DURATION => {
                s.warnings.push(format!(
                    "ignoring vmsilo.autoshutdown={value} on the kernel command line: longer than \
                     100 years"
                ));
            }
            Ok(secs) => s.autoshutdown = Some(Duration::from_secs(secs)),
            Err(_) => s.warnings.push(format!(
                "ignoring vmsilo.autoshutdown={value:?} on the kernel command line: expected whole seconds"
            )),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_autoshutdown_seconds() {
        let s =
            parse("console=ttyS0 vmsilo.ifname=wan,02:00:00:00:00:01 vmsilo.autoshutdown=5 quiet");
        assert_eq!(s.autoshutdown, Some(Duration::from_secs(5)));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn absent_zero_and_garbage_mean_disabled() {
        assert_eq!(parse("console=ttyS0").autoshutdown, None);
        assert_eq!(parse("vmsilo.autoshutdown=0").autoshutdown, None);
        let s = parse("vmsilo.autoshutdown=5m");
        assert_eq!(s.autoshutdown, None);
        assert_eq!(s.warnings.len(), 1);
        // A value no clock can reach is refused, not a panic when the watchdog arms.
        let s = parse("vmsilo.autoshutdown=18446744073709551615");
        assert_eq!(s.autoshutdown, None);
        assert!(s.warnings[0].contains("longer than 100 years"), "{s:?}");
        // The last occurrence wins, as for kernel parameters generally.
        assert_eq!(
            parse("vmsilo.autoshutdown=5 vmsilo.autoshutdown=7").autoshutdown,
            Some(Duration::from_secs(7))
        );
    }
}
