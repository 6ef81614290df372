//! Settings the host passes on the kernel command line (`/proc/cmdline`).

use std::time::Duration;

/// What the agent reads from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSettings {
    /// `vmsilo.autoshutdown=<seconds>`: power off after this long without a running command.
    pub autoshutdown: Option<Duration>,
    /// `vmsilo.waypipe=<port>` (QEMU VMs with windows): run commands under waypipe and carry
    /// its stream to this vsock port of the host.
    pub waypipe_port: Option<u32>,
    /// Parameters that look like ours but could not be used, as messages for the log.
    pub warnings: Vec<String>,
}

/// Parses the kernel command line. Unknown parameters are ignored; a bad
/// `vmsilo.autoshutdown` value is a warning and leaves the watchdog off. `0` also means off.
pub fn parse(cmdline: &str) -> KernelSettings {
    let mut s = KernelSettings::default();
    for word in cmdline.split_whitespace() {
        if let Some(value) = word.strip_prefix("vmsilo.waypipe=") {
            match value.parse::<u32>() {
                Ok(port) if port > 0 => s.waypipe_port = Some(port),
                _ => s.warnings.push(format!(
                    "ignoring vmsilo.waypipe={value:?} on the kernel command line: expected a \
                     vsock port number; commands run without a Wayland display"
                )),
            }
            continue;
        }
        let Some(value) = word.strip_prefix("vmsilo.autoshutdown=") else {
            continue;
        };
        match value.parse::<u64>() {
            Ok(0) => s.autoshutdown = None,
            Ok(secs) if Duration::from_secs(secs) > vmsilo_measure::MAX_DURATION => {
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
    fn test_reads_autoshutdown_seconds() {
        let s =
            parse("console=ttyS0 vmsilo.ifname=wan,02:00:00:00:00:01 vmsilo.autoshutdown=5 quiet");
        assert_eq!(s.autoshutdown, Some(Duration::from_secs(5)));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn test_reads_the_waypipe_port() {
        assert_eq!(parse("console=ttyS0").waypipe_port, None);
        let s = parse("panic=-1 vmsilo.waypipe=6000 quiet");
        assert_eq!(s.waypipe_port, Some(6000));
        assert!(s.warnings.is_empty());
        for bad in [
            "vmsilo.waypipe=",
            "vmsilo.waypipe=0",
            "vmsilo.waypipe=x",
            "vmsilo.waypipe=-1",
        ] {
            let s = parse(bad);
            assert_eq!(s.waypipe_port, None, "{bad}");
            assert_eq!(s.warnings.len(), 1, "{bad}");
        }
    }

    #[test]
    fn test_absent_zero_and_garbage_mean_disabled() {
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
