//! `vm-shell <vm>`: attach this terminal to the VM's console PTY (`<run>/<vm>-console`) in raw
//! mode until CTRL+] (or the VM stops); `--ssh [--root]`: ssh to the first of the VM's addresses
//! that answers on the ssh port, as the guest user `user` (or root).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::poll::{PollFd, PollFlags, poll};
use vmsilo_config::model::InterfaceType;
use vmsilo_config::{Dirs, Vm, derive, plan};

use crate::CliError;
use crate::cli::ShellArgs;
use crate::config_file;
use crate::error::ShellError;
use crate::runtime::ESCAPE;
use crate::term::RawMode;

/// The guest's desktop user (uid 1000 in every vmsilo guest).
pub const GUEST_USER: &str = "user";

/// How long vm-shell --ssh waits for one address to accept a TCP connection on the ssh port.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// An address `vm-shell --ssh` may log in at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshCandidate {
    /// The guest's address.
    pub addr: IpAddr,
    /// The interface it belongs to.
    pub iface: String,
}

/// The IPv4 addresses the host's neighbour table (`/proc/net/arp`) has for `mac`, complete
/// entries only. Lines that do not parse are skipped.
pub fn arp_addresses(arp: &str, mac: &str) -> Vec<Ipv4Addr> {
    arp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (ip, flags, hw) = (f.first()?, f.get(2)?, f.get(3)?);
            (hw.eq_ignore_ascii_case(mac) && *flags != "0x0")
                .then(|| ip.parse().ok())
                .flatten()
        })
        .collect()
}

/// Every address of the VM that ssh may reach, in order of preference: TAP interfaces before
/// vm-switch ones (the host is on a TAP's network; a vm-switch network it reaches only through
/// a routing VM), each in name order; per interface its static IPv4 addresses, its static IPv6
/// addresses, then the IPv4 addresses the host learnt for its MAC (`arp`: the text of
/// `/proc/net/arp`; how a DHCP address is found).
pub fn ssh_candidates(vm: &Vm, arp: &str) -> Vec<SshCandidate> {
    let ifaces = derive::interfaces(vm);
    let mut out: Vec<SshCandidate> = Vec::new();
    for tap in [true, false] {
        for i in ifaces
            .iter()
            .filter(|i| (i.iface.kind == InterfaceType::Tap) == tap)
        {
            let learnt = arp_addresses(arp, &i.mac.to_string());
            let addrs = i
                .iface
                .addresses
                .iter()
                .chain(&i.iface.v6_addresses)
                .map(|c| c.addr)
                .chain(learnt.into_iter().map(IpAddr::V4));
            for addr in addrs {
                if !out.iter().any(|c| c.addr == addr) {
                    out.push(SshCandidate {
                        addr,
                        iface: i.name.to_owned(),
                    });
                }
            }
        }
    }
    out
}

/// The port ssh will use: the last `-p PORT` or `-pPORT` of the extra ssh arguments, else 22.
pub fn ssh_port(ssh_args: &[String]) -> u16 {
    let mut port = 22;
    let mut it = ssh_args.iter();
    while let Some(a) = it.next() {
        let value = match a.strip_prefix("-p") {
            Some("") => it.next().map(String::as_str),
            Some(v) => Some(v),
            None => None,
        };
        if let Some(p) = value.and_then(|v| v.parse().ok()) {
            port = p;
        }
    }
    port
}

/// The first candidate `probe` reaches, or every candidate with why it was not reached.
pub fn choose_reachable(
    candidates: &[SshCandidate],
    port: u16,
    probe: impl Fn(SocketAddr) -> std::io::Result<()>,
) -> Result<&SshCandidate, Vec<(&SshCandidate, std::io::Error)>> {
    let mut failed = Vec::new();
    for c in candidates {
        match probe(SocketAddr::new(c.addr, port)) {
            Ok(()) => return Ok(c),
            Err(e) => failed.push((c, e)),
        }
    }
    Err(failed)
}

fn tcp_probe(addr: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map(drop)
}

fn ssh(vm: &Vm, args: &ShellArgs) -> Result<(), CliError> {
    let arp = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
    let candidates = ssh_candidates(vm, &arp);
    if candidates.is_empty() {
        return Err(CliError::Usage(format!(
            "VM {:?} has no address to ssh to: none of its interfaces has static `addresses` or \
             `v6Addresses`, and the host has not seen a DHCP address for their MACs; give one \
             `addresses`, or use the console (vm-shell {})",
            vm.name, vm.name
        )));
    }
    let port = ssh_port(&args.ssh_args);
    let chosen = choose_reachable(&candidates, port, tcp_probe).map_err(|failed| {
        let tried: Vec<String> = failed
            .iter()
            .map(|(c, e)| {
                let why = match e.kind() {
                    ErrorKind::ConnectionRefused => "connection refused (sshd not running?)".into(),
                    ErrorKind::TimedOut => format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
                    _ => e.to_string(),
                };
                format!("{} ({}): {why}", c.addr, c.iface)
            })
            .collect();
        CliError::from(ShellError::NoSsh {
            vm: vm.name.clone(),
            port,
            tried: tried.join("; "),
        })
    })?;
    let login = if args.root { "root" } else { GUEST_USER };
    let err = std::process::Command::new("ssh")
        .arg(format!("{login}@{}", chosen.addr))
        .args(&args.ssh_args)
        .exec();
    Err(ShellError::RunSsh(err).into())
}

/// Runs `vm-shell`.
pub fn run(config: Option<&Path>, args: &ShellArgs) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    let vm = plan::find_vm(&cfg, &args.vm)?;
    if args.ssh {
        return ssh(vm, args);
    }
    let link = Dirs::with_run_dir(args.run_dir.clone()).console(&vm.name);
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits())
        .open(&link)
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => ShellError::NotRunning {
                vm: vm.name.clone(),
                link: link.clone(),
            },
            ErrorKind::PermissionDenied => ShellError::NotYourConsole {
                link: link.clone(),
                user: cfg.user.clone(),
            },
            _ => ShellError::OpenConsole {
                link: link.clone(),
                source: e,
            },
        })?;
    let console = Flock::lock(console, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            ShellError::ConsoleBusy {
                vm: vm.name.clone(),
            }
        } else {
            ShellError::LockConsole {
                link: link.clone(),
                source: e,
            }
        }
    })?;
    eprintln!(
        "vm-shell: connected to the console of VM {:?}; CTRL+] detaches",
        vm.name
    );
    let stdin = std::io::stdin();
    let raw = RawMode::enter(stdin.as_fd());
    let result = relay(&console, raw.is_some());
    drop(raw);
    match result {
        Ok(Detach::Escape) | Ok(Detach::InputClosed) => {
            eprintln!("\nvm-shell: detached from VM {:?}", vm.name);
            Ok(())
        }
        Ok(Detach::ConsoleClosed) => {
            eprintln!(
                "\nvm-shell: the console of VM {:?} closed (the VM stopped)",
                vm.name
            );
            Ok(())
        }
        Err(source) => Err(ShellError::Relay {
            vm: vm.name.clone(),
            source,
        }
        .into()),
    }
}

enum Detach {
    Escape,
    InputClosed,
    ConsoleClosed,
}

fn relay(console: &std::fs::File, _raw: bool) -> std::io::Result<Detach> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let (input, output) = {
            let mut fds = [
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(console.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let r = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
            (r(0), r(1))
        };
        if !output.is_empty() {
            match (&*console).read(&mut buf) {
                Ok(0) => return Ok(Detach::ConsoleClosed),
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
                // EIO: the master side (the VM's runtime) is gone.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EIO as i32) => {
                    return Ok(Detach::ConsoleClosed);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !input.is_empty() {
            let n = match stdin.lock().read(&mut buf) {
                Ok(0) => return Ok(Detach::InputClosed),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let data = &buf[..n];
            if let Some(i) = data.iter().position(|&b| b == ESCAPE) {
                (&*console).write_all(&data[..i])?;
                return Ok(Detach::Escape);
            }
            (&*console).write_all(data)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmsilo_config::{Format, load_str};

    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
10.0.2.15        0x1         0x2         52:54:00:12:34:56     *        vm-1
10.0.2.16        0x1         0x0         52:54:00:12:34:56     *        vm-1
192.168.1.1      0x1         0x2         aa:bb:cc:dd:ee:ff     *        eth0
garbage
";

    fn vm() -> vmsilo_config::ValidConfig {
        load_str(
            r#"user = "alice"
[[nixosVms]]
name = "t"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
[nixosVms.network.interfaces.a-lan]
vmNetwork.name = "lan"
addresses = ["10.5.0.2/24"]
[nixosVms.network.interfaces.b-wan]
type = "tap"
tap.hostAddress = "10.0.0.254/24"
v6Addresses = ["fd00::1/64"]
[nixosVms.network.interfaces.c-dhcp]
type = "tap"
macAddress = "52:54:00:12:34:56"
dhcp = true
"#,
            Format::Toml,
        )
        .expect("valid")
    }

    #[test]
    fn test_ssh_candidates_cover_every_interface_taps_first() {
        let cfg = vm();
        let got: Vec<(String, String)> = ssh_candidates(cfg.vm("t").expect("t"), ARP)
            .into_iter()
            .map(|c| (c.addr.to_string(), c.iface))
            .collect();
        let want = [
            ("fd00::1", "b-wan"),
            ("10.0.2.15", "c-dhcp"),
            ("10.5.0.2", "a-lan"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, i)| (a.to_string(), i.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(ssh_candidates(cfg.vm("t").expect("t"), "").len(), 2);
    }

    #[test]
    fn test_arp_addresses_only_complete_entries_for_the_mac() {
        assert_eq!(
            arp_addresses(ARP, "52:54:00:12:34:56"),
            [Ipv4Addr::new(10, 0, 2, 15)]
        );
        assert!(arp_addresses(ARP, "02:00:00:00:00:01").is_empty());
        assert!(arp_addresses("", "52:54:00:12:34:56").is_empty());
    }

    #[test]
    fn test_ssh_picks_the_first_address_that_answers() {
        let cands: Vec<SshCandidate> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|a| SshCandidate {
                addr: a.parse().expect("ip"),
                iface: "x".into(),
            })
            .collect();
        let probe = |a: SocketAddr| {
            assert_eq!(a.port(), 2222);
            if a.ip().to_string() == "10.0.0.2" {
                Ok(())
            } else {
                Err(std::io::Error::from(ErrorKind::ConnectionRefused))
            }
        };
        assert_eq!(
            choose_reachable(&cands, 2222, probe)
                .expect("reachable")
                .addr,
            cands[1].addr
        );
        let failed = choose_reachable(&cands, 22, |_| {
            Err(std::io::Error::from(ErrorKind::TimedOut))
        })
        .expect_err("none");
        assert_eq!(failed.len(), 3);
    }

    #[test]
    fn test_ssh_port_follows_the_extra_ssh_arguments() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(ssh_port(&a(&[])), 22);
        assert_eq!(ssh_port(&a(&["-p", "2222"])), 2222);
        assert_eq!(ssh_port(&a(&["-p2200", "-v"])), 2200);
        assert_eq!(ssh_port(&a(&["-p", "nonsense"])), 22);
    }

    #[test]
    fn test_tcp_probe_tells_a_listener_from_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = l.local_addr().expect("addr");
        assert!(tcp_probe(open).is_ok());
        drop(l);
        let e = tcp_probe(open).expect_err("closed");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    }
}
