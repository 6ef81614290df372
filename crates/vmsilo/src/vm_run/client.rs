//! `vm-run`'s side of the command socket before the agent protocol starts: wait for `Ready`,
//! show how the VM's start is going, and turn `Failed` into a message.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::wire::{FailCode, FrameReader, Phase, ServiceFrame, WireError};

/// How often the progress line is redrawn.
const TICK: Duration = Duration::from_millis(100);

/// Clears the progress line (carriage return, erase to end of line).
pub const CLEAR_LINE: &str = "\r\x1b[K";

/// The one-line progress indicator on stderr.
#[derive(Debug, Clone)]
pub struct Progress {
    vm: String,
    /// stderr is a terminal: draw and redraw the line.
    tty: bool,
    /// `-v`: say what happens even without a terminal.
    verbose: bool,
    /// A line is on the screen (shared with the signal thread, which clears it).
    shown: Arc<AtomicBool>,
}

impl Progress {
    /// A progress indicator for `vm`.
    pub fn new(vm: &str, tty: bool, verbose: bool) -> Progress {
        Progress {
            vm: vm.to_owned(),
            tty,
            verbose,
            shown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag saying a line is shown.
    pub fn shown(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shown)
    }

    /// The text of the line.
    pub fn line(vm: &str, phase: Phase, elapsed: Duration) -> String {
        let what = match phase {
            Phase::WaitingForAgent => "booting",
            _ => "starting",
        };
        format!(
            "vmsilo: {what} VM {vm}\u{2026} {:.1} s",
            elapsed.as_secs_f64()
        )
    }

    fn draw(&self, phase: Phase, elapsed: Duration) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(
                err,
                "{CLEAR_LINE}{}",
                Progress::line(&self.vm, phase, elapsed)
            );
            let _ = err.flush();
            self.shown.store(true, Ordering::SeqCst);
        } else if self.verbose && !self.shown.swap(true, Ordering::SeqCst) {
            let _ = writeln!(err, "vmsilo: starting VM {}", self.vm);
        }
    }

    /// Removes the line.
    pub fn clear(&self) {
        if self.tty && self.shown.swap(false, Ordering::SeqCst) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{CLEAR_LINE}");
            let _ = err.flush();
        }
    }
}

/// What `Ready` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyInfo {
    /// This connection waited for the VM to start.
    pub cold: bool,
    /// For how long.
    pub startup: Duration,
}

/// Why the command socket did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The service refused, with its explanation (which can quote guest-influenced output:
    /// shown with control characters escaped, line by line).
    #[error("{}", vmsilo_proto::text::escape_lines(message).collect::<Vec<_>>().join("\n"))]
    Failed {
        /// Its code.
        code: FailCode,
        /// Its message.
        message: String,
    },
    /// The status exchange was malformed, or the connection failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Nothing came for too long.
    #[error("the command service sent nothing for {}", vmsilo_config::measure::format_duration(*.0))]
    Silent(Duration),
}

/// Reads service frames until `Ready`, drawing `progress` while the VM starts. Gives up when
/// the service sends nothing for `silence`. The stream's read timeout is reset afterwards.
pub fn wait_ready(
    stream: &UnixStream,
    progress: &Progress,
    silence: Duration,
) -> Result<ReadyInfo, WaitError> {
    stream.set_read_timeout(Some(TICK)).map_err(WireError::Io)?;
    let mut reader = FrameReader::new();
    let mut last_frame = Instant::now();
    // The latest status: phase, the service's elapsed time, when it arrived.
    let mut status: Option<(Phase, Duration, Instant)> = None;
    let result = loop {
        let frame = match reader.poll(&mut &*stream) {
            Ok(f) => f,
            Err(e) => break Err(WaitError::Wire(e)),
        };
        match frame {
            Some(ServiceFrame::Status { phase, elapsed_ms }) => {
                last_frame = Instant::now();
                status = Some((
                    phase,
                    Duration::from_millis(u64::from(elapsed_ms)),
                    last_frame,
                ));
            }
            Some(ServiceFrame::Ready { cold, startup_ms }) => {
                break Ok(ReadyInfo {
                    cold,
                    startup: Duration::from_millis(u64::from(startup_ms)),
                });
            }
            Some(ServiceFrame::Failed { code, message }) => {
                break Err(WaitError::Failed { code, message });
            }
            None => {}
        }
        if let Some((phase, elapsed, at)) = status {
            progress.draw(phase, elapsed + at.elapsed());
        }
        if last_frame.elapsed() >= silence {
            break Err(WaitError::Silent(silence));
        }
    };
    progress.clear();
    stream.set_read_timeout(None).map_err(WireError::Io)?;
    if let Ok(r) = &result
        && r.cold
        && progress.verbose
    {
        eprintln!(
            "vmsilo: VM {} started; its agent answered after {:.1} s",
            progress.vm,
            r.startup.as_secs_f64()
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_progress_line_text() {
        assert_eq!(
            Progress::line("banking", Phase::StartingVm, Duration::from_millis(4230)),
            "vmsilo: starting VM banking\u{2026} 4.2 s"
        );
        assert_eq!(
            Progress::line("b", Phase::WaitingForAgent, Duration::from_secs(6)),
            "vmsilo: booting VM b\u{2026} 6.0 s"
        );
    }

    #[test]
    fn test_wait_ready_reads_status_then_ready_and_leaves_the_rest() {
        let (mut service, client) = UnixStream::pair().expect("pair");
        let mut bytes = ServiceFrame::Status {
            phase: Phase::StartingVm,
            elapsed_ms: 10,
        }
        .encode();
        bytes.extend(
            ServiceFrame::Ready {
                cold: true,
                startup_ms: 1500,
            }
            .encode(),
        );
        bytes.extend_from_slice(b"agent");
        service.write_all(&bytes).expect("write");
        let p = Progress::new("a", false, false);
        let r = wait_ready(&client, &p, Duration::from_secs(5)).expect("ready");
        assert_eq!(
            r,
            ReadyInfo {
                cold: true,
                startup: Duration::from_millis(1500)
            }
        );
        let mut rest = [0u8; 5];
        std::io::Read::read_exact(&mut &client, &mut rest).expect("rest");
        assert_eq!(&rest, b"agent");
    }

    #[test]
    fn test_wait_ready_reports_failure_garbage_and_silence() {
        let p = Progress::new("a", false, false);
        let (mut service, client) = UnixStream::pair().expect("pair");
        service
            .write_all(
                &ServiceFrame::Failed {
                    code: FailCode::NotConfigured,
                    message: "no VM named \"a\"".into(),
                }
                .encode(),
            )
            .expect("write");
        let e = wait_ready(&client, &p, Duration::from_secs(5)).expect_err("failed");
        assert!(
            matches!(&e, WaitError::Failed { code: FailCode::NotConfigured, message } if message == "no VM named \"a\""),
            "{e:?}"
        );

        let (mut service, client) = UnixStream::pair().expect("pair");
        service
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0x30])
            .expect("write");
        let e = wait_ready(&client, &p, Duration::from_secs(5)).expect_err("oversized");
        assert!(
            matches!(e, WaitError::Wire(WireError::BadLength { .. })),
            "{e:?}"
        );

        let (_service, client) = UnixStream::pair().expect("pair");
        let e = wait_ready(&client, &p, Duration::from_millis(300)).expect_err("silent");
        assert!(matches!(e, WaitError::Silent(_)), "{e:?}");
    }
}
