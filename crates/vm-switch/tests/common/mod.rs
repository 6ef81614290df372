//! Shared helpers: run the real `vm-switch` binary on a scratch config dir, write port files,
//! build frames.

#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vm_switch::frame::{self, Mac};
use vm_switch::testing::{GuestOptions, TestGuest, proc_stat};

pub const SECOND: Duration = Duration::from_secs(1);

pub struct SwitchProc {
    pub child: Child,
    pub dir: PathBuf,
}

impl SwitchProc {
    /// Starts vm-switch with the default sandbox and seccomp (kill) unless `extra` says
    /// otherwise.
    pub fn start(test: &str, extra: &[&str]) -> Self {
        Self::start_as(test, extra, None)
    }

    /// [`SwitchProc::start`] as the given uid and gid (the config directory is theirs).
    pub fn start_as(test: &str, extra: &[&str], ids: Option<(u32, u32)>) -> Self {
        use std::os::unix::process::CommandExt;
        let dir =
            std::env::temp_dir().join(format!("vm-switch-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vm-switch"));
        cmd.arg("-d")
            .arg(&dir)
            .args(["--log-level", "info"])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().unwrap();
        let s = SwitchProc { child, dir };
        s.wait_for(&s.dir.join("stats.sock"));
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    pub fn wait_for(&self, path: &Path) {
        let deadline = Instant::now() + 10 * SECOND;
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared; log:\n{}",
                path.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `<name>.port` atomically (rename), as the runtime does.
    pub fn add_port(
        &self,
        name: &str,
        mac: Mac,
        addrs: &[&str],
        v6: &[&str],
        bcast: bool,
        routes: &[&str],
    ) {
        let q = |v: &[&str]| {
            v.iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            "name = {name:?}\nmac = {:?}\naddresses = [{}]\nv6Addresses = [{}]\nreceiveBroadcast = {bcast}\nroutes = [{}]\n",
            frame::format_mac(mac),
            q(addrs),
            q(v6),
            q(routes)
        );
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join(format!("{name}.port"))).unwrap();
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    pub fn guest(&self, name: &str) -> TestGuest {
        self.guest_with(name, GuestOptions::default())
    }

    pub fn guest_with(&self, name: &str, opts: GuestOptions) -> TestGuest {
        self.wait_for(&self.sock(name));
        TestGuest::connect(&self.sock(name), opts)
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log()))
    }

    /// [`SwitchProc::guest`], failing (instead of hanging) if the port does not answer within
    /// `timeout`: a port whose worker is stuck leaves a new frontend waiting forever.
    pub fn guest_within(&self, name: &str, timeout: Duration) -> TestGuest {
        self.wait_for(&self.sock(name));
        let sock = self.sock(name);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(TestGuest::connect(&sock, GuestOptions::default()));
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => panic!("{e}; log:\n{}", self.log()),
            Err(_) => panic!(
                "port {name} did not answer a new frontend within {timeout:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// How many lines of the switch's log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn stats(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
            .arg("--stats")
            .arg("-d")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "--stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn port_stats(&self, vm: &str) -> serde_json::Value {
        let s = self.stats();
        s["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["vm"] == vm)
            .cloned()
            .unwrap_or_else(|| panic!("no port {vm} in {s}"))
    }

    /// Waits until each named port has rings to and from every other named port.
    pub fn wait_mesh(&self, vms: &[&str]) {
        for vm in vms {
            self.wait_stats(vm, "rings set up", |p| {
                p["linked_peers"].as_u64() >= Some(vms.len() as u64 - 1)
            });
        }
    }

    /// Waits until `f` holds for the stats of `vm`.
    pub fn wait_stats(
        &self,
        vm: &str,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + 10 * SECOND;
        loop {
            let s = self.port_stats(vm);
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: stats of {vm} never matched: {s}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SwitchProc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

pub const MAC_A: Mac = [0x52, 0x54, 0, 0, 0, 0xa];
pub const MAC_B: Mac = [0x52, 0x54, 0, 0, 0, 0xb];
pub const MAC_C: Mac = [0x52, 0x54, 0, 0, 0, 0xc];

pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Ethernet + IPv4 + UDP with a valid IPv4 header checksum; `tag` goes into the payload.
pub fn udp4(src_mac: Mac, dst_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr, tag: u32) -> Vec<u8> {
    let payload = tag.to_be_bytes().repeat(4);
    let total = 20 + 8 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&frame::ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, frame::IPPROTO_UDP, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let c = frame::csum_fold(frame::csum_add(0, &f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

pub fn udp6(src_mac: Mac, dst_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, tag: u32) -> Vec<u8> {
    let payload = tag.to_be_bytes().repeat(4);
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&frame::ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[frame::IPPROTO_UDP, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

pub fn arp_request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&frame::BROADCAST_MAC);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&frame::ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

pub fn neighbor_solicit(sha: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let dst = vm_switch::forward::solicited_node(target);
    let mut f = Vec::new();
    f.extend_from_slice(&[0x33, 0x33, 0xff, t[13], t[14], t[15]]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&frame::ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, frame::IPPROTO_ICMPV6, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let start = f.len();
    f.extend_from_slice(&[frame::ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&t);
    f.extend_from_slice(&[1, 1]);
    f.extend_from_slice(&sha);
    let mut sum = frame::csum_add(0, &src.octets());
    sum = frame::csum_add(sum, &dst.octets());
    sum = frame::csum_add(sum, &32u32.to_be_bytes());
    sum = frame::csum_add(sum, &[0, 0, 0, frame::IPPROTO_ICMPV6]);
    sum = frame::csum_add(sum, &f[start..]);
    let c = frame::csum_fold(sum);
    f[start + 2..start + 4].copy_from_slice(&c.to_be_bytes());
    f
}

/// The payload tag of a frame built by `udp4`/`udp6`.
pub fn tag_of(f: &[u8]) -> Option<u32> {
    let off = match u16::from_be_bytes([*f.get(12)?, *f.get(13)?]) {
        0x0800 => 14 + 20 + 8,
        0x86dd => 14 + 40 + 8,
        _ => return None,
    };
    let b = f.get(off..off + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The two ends of `two_ports`' a → b and b → a IPv4 traffic: (source MAC, destination MAC,
/// source address, destination address).
pub type Ends = (Mac, Mac, &'static str, &'static str);
/// a (10.0.0.1) to b (10.0.0.2).
pub const A_TO_B: Ends = (MAC_A, MAC_B, "10.0.0.1", "10.0.0.2");
/// b (10.0.0.2) to a (10.0.0.1).
pub const B_TO_A: Ends = (MAC_B, MAC_A, "10.0.0.2", "10.0.0.1");

/// Sends a UDP frame tagged `tag` from `from` over `ends`; whether `to` receives it within 5 s.
pub fn udp_arrives(from: &mut TestGuest, to: &mut TestGuest, ends: Ends, tag: u32) -> bool {
    let (src_mac, dst_mac, src, dst) = ends;
    from.send(&udp4(src_mac, dst_mac, v4(src), v4(dst), tag))
        .expect("send");
    to.recv_matching(5 * SECOND, |f| tag_of(f) == Some(tag))
        .is_some()
}

/// Pids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = proc_stat(p).and_then(|f| f.get(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// CPU time (clock ticks, user + system) that the process `pid` and its children have used so
/// far: a port's sandboxed worker is the child of the process the stats name.
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(children_of(pid))
        .filter_map(|p| {
            let f = proc_stat(p)?;
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}
