//! End to end: a QEMU launch plan, executed as planned, boots a real guest (Debian kernel,
//! testkit initramfs, QEMU/TCG) and everything it promises works:
//!
//! - the backends (vhost-device-vsock, virtiofsd) start from the plan's argv and QEMU accepts
//!   every flag of the plan's argv;
//! - the console socket (QEMU listening) carries the guest's shell;
//! - the vm-switch port (served here by the testkit's vhost-user-net hub at the plan's socket
//!   path) appears in the guest under its configured name, with the derived MAC and the address
//!   from the `vmsilo.*` kernel parameters;
//! - disks appear in the planned order: root disk vda, qcow2 overlay vdb, additional disk vdc;
//! - the shared home is mounted by tag with the uid mapping (host user ↔ guest uid 1000, guest
//!   root may not create files);
//! - hybrid vsock reaches the guest at the plan's `vsockSocket`, and QMP answers with the
//!   balloon device present.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmsilo_config::plan::{self, LaunchPlan, PlanOptions, RunAs};
use vmsilo_config::{Format, load_str};
use vmsilo_testkit::hub::VhostNetHub;
use vmsilo_testkit::{ImageSpec, Qmp, ScratchDir};

/// Kills every process it holds when dropped (also when the test fails).
#[derive(Default)]
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for_path(path: &str, procs: &mut Procs, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(path).exists() {
        for (name, c) in &mut procs.0 {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{name} exited with {status} before {what} {path} appeared");
            }
        }
        assert!(Instant::now() < deadline, "{what} {path} did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest's serial console, through the plan's console socket.
struct Console {
    stream: UnixStream,
    seen: String,
    n: u32,
}

impl Console {
    fn connect(path: &str) -> Console {
        let stream = UnixStream::connect(path).expect("connect to the console socket");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set timeout");
        Console {
            stream,
            seen: String::new(),
            n: 0,
        }
    }

    /// Reads until `pattern` is in the output after `from`; returns the position after it.
    fn wait_for(&mut self, from: usize, pattern: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen[from..].find(pattern) {
                return from + i + pattern.len();
            }
            assert!(
                !self.seen.contains("VMSILO-INIT-FAILED"),
                "guest init failed:\n{}",
                self.seen
            );
            assert!(
                Instant::now() < deadline,
                "no {pattern:?} on the console; it shows:\n{}",
                self.seen
            );
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("console closed; it showed:\n{}", self.seen),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the console: {e}"),
            }
        }
    }

    /// Runs a shell command; returns (output, exit status).
    fn run(&mut self, cmd: &str) -> (String, i32) {
        self.n += 1;
        let n = self.n;
        let start = self.seen.len();
        // The quotes keep the echoed command line from matching the markers.
        let line = format!("echo __B''EGIN{n}__; {cmd}; echo __E''ND{n}:$?__\n");
        self.stream
            .write_all(line.as_bytes())
            .expect("write to the console");
        let begin = self.wait_for(start, &format!("__BEGIN{n}__"), Duration::from_secs(60));
        let end_marker = format!("__END{n}:");
        let end = self.wait_for(begin, &end_marker, Duration::from_secs(60));
        let close = self.wait_for(end, "__", Duration::from_secs(10));
        let status: i32 = self.seen[end..close - 2]
            .trim()
            .parse()
            .expect("exit status");
        let out = self.seen[begin..end - end_marker.len()]
            .replace('\r', "")
            .trim()
            .to_owned();
        (out, status)
    }

    fn run_ok(&mut self, cmd: &str) -> String {
        let (out, status) = self.run(cmd);
        assert_eq!(status, 0, "{cmd} failed: {out}");
        out
    }
}

fn start_backends(p: &LaunchPlan, procs: &mut Procs) {
    for b in &p.backends {
        assert_eq!(
            b.run_as,
            RunAs::Root,
            "{}: QEMU backends run as root",
            b.kind
        );
        let child = Command::new(&b.argv[0])
            .args(&b.argv[1..])
            .envs(&b.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e} (run `cargo xtask setup`)", b.kind));
        procs.0.push((b.kind.clone(), child));
        wait_for_path(&b.socket, procs, &format!("{} socket", b.kind));
    }
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_e2e_qemu_plan_boots_a_guest_with_every_planned_device() {
    let image = ImageSpec::new()
        .module("virtio_blk")
        .program("socat")
        .build()
        .expect("guest image");
    let dir = ScratchDir::new("qemu-plan").expect("scratch dir");
    let d = dir.path().to_str().expect("utf-8 path").to_owned();
    for sub in ["run", "vs/lan", "state/overlays", "home"] {
        std::fs::create_dir_all(format!("{d}/{sub}")).expect("mkdir");
    }
    // The host user the shared home maps to, and a file it owns.
    let (uid, gid) = (4242, 4343);
    std::fs::write(format!("{d}/home/hello.txt"), "hello from the host\n").expect("write");
    std::os::unix::fs::chown(format!("{d}/home/hello.txt"), Some(uid), Some(gid)).expect("chown");
    std::os::unix::fs::chown(format!("{d}/home"), Some(uid), Some(gid)).expect("chown");
    // Disks of distinct sizes, to tell them apart in the guest.
    let root = std::fs::File::create(format!("{d}/root.img")).expect("root disk");
    root.set_len(8 << 20).expect("size");
    let data = std::fs::File::create(format!("{d}/data.img")).expect("data disk");
    data.set_len(4 << 20).expect("size");

    let config = format!(
        r#"
user = "alice"
qemu.accel = "tcg"

[[nixosVms]]
name = "e2e"
vmm = "qemu"
memory = 256
cpus = 1
gpu = false
sound = false
sharedHome = "{d}/home"
kernel = "{kernel}"
initramfs = "{initrd}"
rootDisk = "{d}/root.img"
additionalDisks = [{{ path = "{d}/data.img", sparse = true }}]
rootOverlay = {{ type = "qcow2", size = "64m" }}
network.nameservers = ["10.77.0.1"]
[nixosVms.network.interfaces.lan]
vmNetwork.name = "lan"
addresses = ["10.77.0.2/24"]
"#,
        kernel = image.kernel.display(),
        initrd = image.initrd.display(),
    );
    let cfg = load_str(&config, Format::Toml).expect("valid configuration");
    let mut opts = PlanOptions::new(uid, gid);
    opts.dirs.run_dir = format!("{d}/run");
    opts.dirs.vm_switch_dir = format!("{d}/vs");
    opts.dirs.state_dir = format!("{d}/state");
    let p = plan::build(&cfg, "e2e", &opts).expect("plan");

    let mut procs = Procs::default();
    // The runtime's jobs: overlay image, vm-switch port (a hub stands in), backends.
    let overlay = p.overlay.path.clone().expect("qcow2 overlay");
    let status = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            &overlay,
            &p.overlay.size_bytes.to_string(),
        ])
        .status()
        .expect("qemu-img");
    assert!(status.success());
    let hub = VhostNetHub::start(dir.path(), 2).expect("vhost-user-net hub");
    let port = &p.paths.vm_switch[0];
    std::os::unix::fs::symlink(hub.socket(0), &port.socket).expect("symlink the port socket");
    start_backends(&p, &mut procs);

    let qemu = Command::new(&p.argv[0])
        .args(&p.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start QEMU");
    procs.0.push(("qemu".into(), qemu));
    wait_for_path(&p.paths.console_socket, &mut procs, "console socket");
    let mut console = Console::connect(&p.paths.console_socket);
    console.wait_for(0, "VMSILO-READY", Duration::from_secs(120));

    // QMP: the balloon device exists and reports the guest's memory.
    let qmp_path = p.paths.qmp_socket.clone().expect("QMP socket");
    let mut qmp = Qmp::connect(Path::new(&qmp_path)).expect("QMP");
    assert_eq!(qmp.query_balloon().expect("query-balloon"), 256 << 20);

    // Network: name, MAC and address from the plan.
    let mac = &p.interfaces[0].mac;
    let link = console.run_ok("ip -o link show lan");
    assert!(link.contains(mac.as_str()), "{link}");
    let addr = console.run_ok("ip -o addr show lan");
    assert!(addr.contains("10.77.0.2/24"), "{addr}");
    assert!(console.run_ok("cat /etc/resolv.conf").contains("10.77.0.1"));

    // Disks in the planned order (sizes in 512-byte sectors).
    let sizes = console.run_ok("cat /sys/block/vda/size /sys/block/vdb/size /sys/block/vdc/size");
    let sizes: Vec<&str> = sizes.split_whitespace().collect();
    assert_eq!(
        sizes,
        ["16384", "131072", "8192"],
        "root 8 MiB, overlay 64 MiB, data 4 MiB"
    );
    assert_eq!(
        console.run_ok("cat /sys/block/vda/ro"),
        "1",
        "the root disk is read-only"
    );
    let cmdline = console.run_ok("cat /proc/cmdline");
    assert!(
        cmdline.contains("vmsilo.overlay=qcow2,/dev/vdb"),
        "{cmdline}"
    );

    // Shared home: mounted by tag; host uid 4242 appears as the guest user 1000.
    console.run_ok("mkdir -p /mnt/home && mount -t virtiofs home /mnt/home");
    assert_eq!(
        console.run_ok("cat /mnt/home/hello.txt"),
        "hello from the host"
    );
    assert_eq!(
        console.run_ok("stat -c %u:%g /mnt/home/hello.txt"),
        "1000:1000"
    );
    let (out, status) = console.run("touch /mnt/home/by-root");
    assert_ne!(
        status, 0,
        "guest root must not create files in the shared home: {out}"
    );
    console.run_ok(
        "echo 'user:x:1000:1000::/:/bin/sh' >>/etc/passwd && echo 'user:x:1000:' >>/etc/group",
    );
    console.run_ok("su user -s /bin/sh -c 'echo from-guest >/mnt/home/by-user'");
    let meta = std::fs::metadata(format!("{d}/home/by-user")).expect("file made by the guest");
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    assert!(!Path::new(&format!("{d}/home/by-root")).exists());

    // vsock: hybrid vsock from the host to a guest listener.
    console.run_ok("(socat VSOCK-LISTEN:1234,fork EXEC:'echo vsock-ok' >/dev/null 2>&1 &)");
    let vsock = p.paths.vsock_socket.clone().expect("vsock socket");
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let mut s = UnixStream::connect(&vsock).expect("connect to the hybrid vsock socket");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"CONNECT 1234\n").expect("CONNECT");
        let mut r = BufReader::new(s);
        let mut ok = String::new();
        let _ = r.read_line(&mut ok);
        if ok.starts_with("OK ") {
            let mut line = String::new();
            r.read_line(&mut line).expect("read from the guest");
            break line;
        }
        // The listener may not be up yet: a refused CONNECT is a plain close.
        assert!(
            Instant::now() < deadline,
            "the guest vsock listener never answered"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(reply.trim(), "vsock-ok");

    qmp.quit().expect("quit");
    let (_, qemu) = procs.0.last_mut().expect("qemu");
    let status = qemu.wait().expect("wait for QEMU");
    assert!(status.success(), "QEMU exited with {status}");
    drop(hub);
}
