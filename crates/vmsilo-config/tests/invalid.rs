//! Table-driven test of invalid configurations: each case must be rejected with a diagnostic at
//! the expected field path, naming the offending value, with the expected message text.

use vmsilo_config::{ConfigError, Diagnostic, Format, load_str};

/// One invalid configuration.
struct Case {
    /// What is wrong.
    name: &'static str,
    /// The configuration.
    text: String,
    /// Format of `text`.
    format: Format,
    /// The absolute field path of the expected diagnostic.
    path: &'static str,
    /// Text the diagnostic's message must contain.
    message: &'static str,
    /// The offending value as the diagnostic reports it (JSON notation), if there is one.
    value: Option<&'static str>,
}

const BASE_VM: &str =
    "[[nixosVms]]\nname = \"a\"\nkernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n";

/// Global options, then no VM.
fn g(extra: &str) -> String {
    format!("user = \"alice\"\n{extra}\n")
}

/// A valid VM "a" followed by `extra` (keys of the VM, then sub-tables).
fn v(extra: &str) -> String {
    format!("user = \"alice\"\n{BASE_VM}{extra}\n")
}

/// Two VMs, "a" and "b", each with its own extra text.
fn v2(a: &str, b: &str) -> String {
    format!(
        "user = \"alice\"\n{BASE_VM}{a}\n[[nixosVms]]\nname = \"b\"\nkernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n{b}\n"
    )
}

/// A QEMU VM "a" (GPU and sound off) followed by `extra`.
fn q(extra: &str) -> String {
    v(&format!(
        "vmm = \"qemu\"\ngpu = false\nsound = false\n{extra}"
    ))
}

fn case(
    name: &'static str,
    text: String,
    path: &'static str,
    message: &'static str,
    value: Option<&'static str>,
) -> Case {
    Case {
        name,
        text,
        format: Format::Toml,
        path,
        message,
        value,
    }
}

fn json_case(
    name: &'static str,
    text: &str,
    path: &'static str,
    message: &'static str,
    value: Option<&'static str>,
) -> Case {
    Case {
        name,
        text: text.to_owned(),
        format: Format::Json,
        path,
        message,
        value,
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // --- global options
        case("global typo", "usr = \"alice\"\n".into(), "usr", "unknown option \"usr\"; did you mean \"user\"?", Some("\"alice\"")),
        case("user missing", "enable = true\n".into(), "user", "is required", None),
        case("user empty", "user = \"\"\n".into(), "user", "is empty", Some("\"\"")),
        case("user invalid", "user = \"al ice\"\n".into(), "user", "is not a valid user name", Some("\"al ice\"")),
        case("nat without interface", g("hostNetworking.nat.enable = true"), "hostNetworking.nat.interface", "must be set when hostNetworking.nat.enable is true", Some("\"\"")),
        case("nat interface too long", g("hostNetworking.nat = { enable = true, interface = \"enp0s31f6abcdefgh\" }"), "hostNetworking.nat.interface", "interface names are at most 15 bytes", Some("\"enp0s31f6abcdefgh\"")),
        case("nat enable not a bool", g("hostNetworking.nat.enable = \"yes\""), "hostNetworking.nat.enable", "expected true or false, found a string (\"yes\")", Some("\"yes\"")),
        case("crosvm log level", g("crosvm.logLevel = \"loud\""), "crosvm.logLevel", "is not a crosvm log filter", Some("\"loud\"")),
        case("vm-switch log level", g("vm-switch.logLevel = \"verbose\""), "vm-switch.logLevel", "\"verbose\" is not a valid log level", Some("\"verbose\"")),
        case("balloond poll interval unit", g("vmsilo-balloond.pollInterval = \"2\""), "vmsilo-balloond.pollInterval", "unknown unit", Some("\"2\"")),
        case("balloond poll interval zero", g("vmsilo-balloond.pollInterval = \"0s\""), "vmsilo-balloond.pollInterval", "expected 50ms to 1h", Some("\"0s\"")),
        case("balloond poll interval too long", g("vmsilo-balloond.pollInterval = \"2h\""), "vmsilo-balloond.pollInterval", "expected 50ms to 1h", Some("\"2h\"")),
        case("balloond bias size", g("vmsilo-balloond.guestAvailableBias = \"300x\""), "vmsilo-balloond.guestAvailableBias", "has an unknown unit \"x\"", Some("\"300x\"")),
        case("balloond percent range", g("vmsilo-balloond.criticalHostPercent = 150"), "vmsilo-balloond.criticalHostPercent", "150 is out of range: expected 0 to 100", Some("150")),
        case("clipboard action", g("[[clipboard.policy]]\nfrom = \"*\"\nto = \"*\"\naction = \"maybe\""), "clipboard.policy[0].action", "is not allow, ask or deny", Some("\"maybe\"")),
        case("clipboard endpoint", g("[[clipboard.policy]]\nfrom = \"a:b\"\nto = \"*\"\naction = \"deny\""), "clipboard.policy[0].from", "is not a VM name", Some("\"a:b\"")),
        case("clipboard mime", g("clipboard.mimeTypes = [\"application/x-evil\"]"), "clipboard.mimeTypes", "cannot be allowed", None),
        case("clipboard size", g("clipboard.maxSize = 0"), "clipboard.maxSize", "out of range", Some("0")),
        case("clipboard wipe", g("clipboard.wipeAfter = \"0s\""), "clipboard.wipeAfter", "expected 1s to 24h", Some("\"0s\"")),
        case("clipboard chord without ctrl", g("clipboard.chords.copy = \"shift+c\""), "clipboard.chords.copy", "needs ctrl, alt or super", Some("\"shift+c\"")),
        case("balloond unknown key", g("vmsilo-balloond.pollIntervall = \"1s\""), "vmsilo-balloond.pollIntervall", "did you mean \"pollInterval\"?", Some("\"1s\"")),
        case("isolated pci format", g("isolatedPciDevices = [\"1:00.0\"]"), "isolatedPciDevices[0]", "is not a PCI address", Some("\"1:00.0\"")),
        case("isolated pci duplicate", g("isolatedPciDevices = [\"01:00.0\", \"0000:01:00.0\"]"), "isolatedPciDevices[1]", "0000:01:00.0 is listed twice", Some("\"0000:01:00.0\"")),
        case("qemu accel", g("qemu.accel = \"hvf\""), "qemu.accel", "\"hvf\" is not a valid QEMU accelerator", Some("\"hvf\"")),
        case("removed crosvm flag", g("crosvm.extraRunArgs = [\"--vhost-user-fs=/run/fs.sock\"]"), "crosvm.extraRunArgs[0]", "crosvm no longer has --vhost-user-fs: use --vhost-user fs,socket=PATH", Some("\"--vhost-user-fs=/run/fs.sock\"")),
        case("nixosVms not a list", g("nixosVms = 3"), "nixosVms", "expected a list of VMs, found a number (3)", Some("3")),
        // --- VM identity and resources
        case("vm name missing", g("[[nixosVms]]\nmemory = 512"), "nixosVms[0].name", "is required", None),
        case("vm name invalid", v("").replace("name = \"a\"", "name = \"bank ing\""), "nixosVms[0].name", "contains ' '", Some("\"bank ing\"")),
        case("vm name too long", v("").replace("name = \"a\"", &format!("name = \"{}\"", "x".repeat(41))), "nixosVms[0].name", "VM names are at most 40 bytes", None),
        case("vm names duplicate", v2("", "").replace("name = \"b\"", "name = \"a\""), "nixosVms[1].name", "another VM is already called \"a\"", Some("\"a\"")),
        case("memory too small", v("memory = 16"), "nixosVms[0].memory", "16 is out of range: expected 64 to 1048576 MiB", Some("16")),
        case("memory as a size", v("memory = \"4G\""), "nixosVms[0].memory", "expected a whole number, found a string (\"4G\")", Some("\"4G\"")),
        case("cpus zero", v("cpus = 0"), "nixosVms[0].cpus", "0 is out of range: expected 1 to 255 vCPUs", Some("0")),
        case("color typo", v("color = \"gren\""), "nixosVms[0].color", "did you mean \"green\"", Some("\"gren\"")),
        case("color hex", v("color = \"#12345\""), "nixosVms[0].color", "is not a hex colour", Some("\"#12345\"")),
        case("vm key typo", v("memroy = 512"), "nixosVms[0].memroy", "unknown option \"memroy\"; did you mean \"memory\"?", Some("512")),
        case("kernel missing", g("[[nixosVms]]\nname = \"a\"\ninitramfs = \"/i\"\nrootDisk = \"/r\""), "nixosVms[0].kernel", "is not set: the NixOS module fills it", None),
        case("root disk missing", g("[[nixosVms]]\nname = \"a\"\nkernel = \"/k\"\ninitramfs = \"/i\""), "nixosVms[0].rootDisk", "rootDisk = \"/var/lib/vmsilo/images/a/root.img\"", None),
        case("kernel relative", v("").replace("kernel = \"/k\"", "kernel = \"vmlinuz\""), "nixosVms[0].kernel", "\"vmlinuz\" is not an absolute path", Some("\"vmlinuz\"")),
        case("autoshutdown zero", v("autoShutdown = { enable = true, after = 0 }"), "nixosVms[0].autoShutdown.after", "0 is out of range: expected 1", Some("0")),
        case("autoshutdown duration", v("autoShutdown = { enable = true, after = \"soon\" }"), "nixosVms[0].autoShutdown.after", "is not a number followed by a unit", Some("\"soon\"")),
        case("autoshutdown duration over a year", v("autoShutdown = { enable = true, after = \"9000h\" }"), "nixosVms[0].autoShutdown.after", "from 1s to 31536000s", Some("\"9000h\"")),
        case("autoshutdown duration past any clock", v("autoShutdown = { enable = true, after = \"5000000000000000h\" }"), "nixosVms[0].autoShutdown.after", "at most 100 years", Some("\"5000000000000000h\"")),
        case("kernel cmdline too long", v(&format!("kernelParams = [\"{}\"]", "x".repeat(2100))), "nixosVms[0].kernelParams", "the kernel command line would be", None),
        case("kernel param newline", v("kernelParams = [\"a\\nb\"]"), "nixosVms[0].kernelParams[0]", "cannot be empty or contain a newline", Some("\"a\\nb\"")),
        case("vmm unknown", v("vmm = \"firecracker\""), "nixosVms[0].vmm", "\"firecracker\" is not a valid VMM: expected one of \"crosvm\", \"qemu\"", Some("\"firecracker\"")),
        case("qemu args on crosvm vm", v("qemu.extraArgs = [\"-s\"]"), "nixosVms[0].qemu.extraArgs", "only applies to QEMU VMs", None),
        case("per-vm crosvm log level", v("crosvm.logLevel = \"chatty\""), "nixosVms[0].crosvm.logLevel", "is not a crosvm log filter", Some("\"chatty\"")),
        case("wayland proxy typo", v("waylandProxy = \"sommelir\""), "nixosVms[0].waylandProxy", "did you mean \"sommelier\"?", Some("\"sommelir\"")),
        case("overlay type", v("rootOverlay.type = \"zfs\""), "nixosVms[0].rootOverlay.type", "\"zfs\" is not a valid overlay type", Some("\"zfs\"")),
        case("overlay size", v("rootOverlay.size = \"10X\""), "nixosVms[0].rootOverlay.size", "has an unknown unit \"X\"", Some("\"10X\"")),
        case("overlay size fraction of bytes", v("rootOverlay.size = \"1.5\""), "nixosVms[0].rootOverlay.size", "(a fraction needs a unit)", Some("\"1.5\"")),
        case("overlay size beyond qemu-img", v("rootOverlay.size = \"8E\""), "nixosVms[0].rootOverlay.size", "\"8E\" is too large", Some("\"8E\"")),
        // --- dependencies
        case("depends on unknown vm", v2("dependsOn = [\"c\"]", ""), "nixosVms[0].dependsOn[0]", "there is no VM called \"c\"", Some("\"c\"")),
        case("depends on typo", v2("", "").replace("name = \"b\"", "name = \"shopping\"") + "dependsOn = [\"shoping\"]\n", "nixosVms[1].dependsOn[0]", "(did you mean \"shopping\"?)", Some("\"shoping\"")),
        case("depends on itself", v("dependsOn = [\"a\"]"), "nixosVms[0].dependsOn[0]", "a VM cannot depend on itself", Some("\"a\"")),
        case("dependency cycle", v2("dependsOn = [\"b\"]", "dependsOn = [\"a\"]"), "nixosVms[0].dependsOn", "dependencies form a cycle: a -> b -> a", None),
        // --- interfaces
        case("interface type", v("[nixosVms.network.interfaces.wan]\ntype = \"bridge\""), "nixosVms[0].network.interfaces.wan.type", "\"bridge\" is not a valid interface type", Some("\"bridge\"")),
        case("interface name too long", v("[nixosVms.network.interfaces.averyveryverylongname]\ntype = \"tap\""), "nixosVms[0].network.interfaces.averyveryverylongname", "interface name \"averyveryverylongname\" is 21 bytes", Some("\"averyveryverylongname\"")),
        case("interface key typo", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nadresses = [\"10.0.0.1/24\"]"), "nixosVms[0].network.interfaces.wan.adresses", "did you mean \"addresses\"?", Some("[\"10.0.0.1/24\"]")),
        case("host address and bridge", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\ntap = { hostAddress = \"10.0.0.254/24\", bridge = \"br0\" }"), "nixosVms[0].network.interfaces.wan.tap", "hostAddress and bridge are mutually exclusive", Some("hostAddress = \"10.0.0.254/24\", bridge = \"br0\"")),
        case("tap name too long", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\ntap.name = \"tap-for-banking-vm\""), "nixosVms[0].network.interfaces.wan.tap.name", "interface names are at most 15 bytes (IFNAMSIZ)", Some("\"tap-for-banking-vm\"")),
        case("default tap name too long", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"").replace("name = \"a\"", "name = \"online-banking\""), "nixosVms[0].network.interfaces.wan.tap.name", "the default TAP name (<vm>-<index>) \"online-banking-0\" is 16 bytes", Some("\"online-banking-0\"")),
        case("tap names collide", v2("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\ntap.name = \"t0\"", "[nixosVms.network.interfaces.wan]\ntype = \"tap\"\ntap.name = \"t0\""), "nixosVms[1].network.interfaces.wan.tap.name", "TAP name \"t0\" is already used by VM \"a\" interface \"wan\"", Some("\"t0\"")),
        case("vm-switch without network", v("[nixosVms.network.interfaces.lan]\ntype = \"vm-switch\""), "nixosVms[0].network.interfaces.lan.vmNetwork.name", "is required for vm-switch interfaces", None),
        case("vm-switch network name", v("[nixosVms.network.interfaces.lan]\nvmNetwork.name = \"my lan\""), "nixosVms[0].network.interfaces.lan.vmNetwork.name", "contains ' '", Some("\"my lan\"")),
        case("vm-switch with tap option", v("[nixosVms.network.interfaces.lan]\nvmNetwork.name = \"lan\"\ntap.hostAddress = \"10.0.0.1/24\""), "nixosVms[0].network.interfaces.lan.tap.hostAddress", "only applies to TAP interfaces", None),
        case("tap with vm network", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nvmNetwork.name = \"lan\""), "nixosVms[0].network.interfaces.wan.vmNetwork.name", "only vm-switch interfaces join a vm-switch network", Some("\"lan\"")),
        case("same vm-switch network twice", v("[nixosVms.network.interfaces.a1]\nvmNetwork.name = \"lan\"\n[nixosVms.network.interfaces.a2]\nvmNetwork.name = \"lan\""), "nixosVms[0].network.interfaces.a2.vmNetwork.name", "interface \"a1\" already joins vm-switch network \"lan\"", Some("\"lan\"")),
        case("vm-switch route host bits", v("[nixosVms.network.interfaces.lan]\nvmNetwork = { name = \"lan\", routes = [\"10.0.0.1/8\"] }"), "nixosVms[0].network.interfaces.lan.vmNetwork.routes[0]", "has host bits set: a route destination is a network prefix, did you mean 10.0.0.0/8?", Some("\"10.0.0.1/8\"")),
        case("address without prefix", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\naddresses = [\"10.0.0.1\"]"), "nixosVms[0].network.interfaces.wan.addresses[0]", "is not an address with a prefix length", Some("\"10.0.0.1\"")),
        case("v6 address in addresses", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\naddresses = [\"fd00::1/64\"]"), "nixosVms[0].network.interfaces.wan.addresses[0]", "fd00::1/64 is an IPv6 address: put it in v6Addresses", Some("\"fd00::1/64\"")),
        case("v4 address in v6Addresses", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nv6Addresses = [\"10.0.0.1/24\"]"), "nixosVms[0].network.interfaces.wan.v6Addresses[0]", "is an IPv4 address: put it in addresses", Some("\"10.0.0.1/24\"")),
        case("guest address equals host address", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\ntap.hostAddress = \"10.0.0.254/24\"\naddresses = [\"10.0.0.254/24\"]"), "nixosVms[0].network.interfaces.wan.addresses", "is the host's side of the TAP", Some("\"10.0.0.254/24\"")),
        case("route gateway family", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nroutes.\"0.0.0.0/0\".via = \"fd00::1\""), "nixosVms[0].network.interfaces.wan.routes.\"0.0.0.0/0\".via", "gateway fd00::1 is not an IPv4 address", Some("\"fd00::1\"")),
        case("route destination family", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nroutes.\"::/0\".via = \"10.0.0.1\""), "nixosVms[0].network.interfaces.wan.routes.\"::/0\"", "::/0 is not an IPv4 destination: put it in v6Routes", Some("\"::/0\"")),
        case("route host bits", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nroutes.\"10.1.2.3/16\".via = \"10.0.0.1\""), "nixosVms[0].network.interfaces.wan.routes.\"10.1.2.3/16\"", "did you mean 10.1.0.0/16?", Some("\"10.1.2.3/16\"")),
        case("route without via", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nroutes.\"0.0.0.0/0\" = {}"), "nixosVms[0].network.interfaces.wan.routes.\"0.0.0.0/0\".via", "is required: the gateway address", None),
        case("route destination not cidr", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nroutes.default.via = \"10.0.0.1\""), "nixosVms[0].network.interfaces.wan.routes.default", "\"default\" is not an address with a prefix length", Some("\"default\"")),
        case("nameserver invalid", v("network.nameservers = [\"one.one.one.one\"]"), "nixosVms[0].network.nameservers[0]", "\"one.one.one.one\" is not an IPv4 or IPv6 address", Some("\"one.one.one.one\"")),
        case("mac malformed", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nmacAddress = \"52:54:00:12:34\""), "nixosVms[0].network.interfaces.wan.macAddress", "is not a MAC address", Some("\"52:54:00:12:34\"")),
        case("mac multicast", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nmacAddress = \"01:00:5e:00:00:01\""), "nixosVms[0].network.interfaces.wan.macAddress", "is a multicast address", Some("\"01:00:5e:00:00:01\"")),
        case("mac duplicate", v2("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nmacAddress = \"52:54:00:00:00:01\"", "[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nmacAddress = \"52:54:00:00:00:01\""), "nixosVms[1].network.interfaces.wan.macAddress", "MAC 52:54:00:00:00:01 is already used by VM \"a\" interface \"wan\"", Some("\"52:54:00:00:00:01\"")),
        case("dhcp not a bool", v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\ndhcp = \"yes\""), "nixosVms[0].network.interfaces.wan.dhcp", "expected true or false", Some("\"yes\"")),
        // --- PCI
        case("pci not isolated", v("pciDevices = [{ path = \"01:00.0\" }]"), "nixosVms[0].pciDevices[0].path", "0000:01:00.0 is not in isolatedPciDevices", Some("\"0000:01:00.0\"")),
        case("pci format", v("pciDevices = [{ path = \"1:00.0\" }]"), "nixosVms[0].pciDevices[0].path", "is not a PCI address", Some("\"1:00.0\"")),
        case("pci in two vms", v2("pciDevices = [{ path = \"01:00.0\" }]", "pciDevices = [{ path = \"0000:01:00.0\" }]").replace("user = \"alice\"", "user = \"alice\"\nisolatedPciDevices = [\"01:00.0\"]"), "nixosVms[1].pciDevices[0].path", "0000:01:00.0 is already passed through to VM \"a\"", Some("\"0000:01:00.0\"")),
        case("pci iommu value", v("pciDevices = [{ path = \"01:00.0\", iommu = \"yes\" }]").replace("user = \"alice\"", "user = \"alice\"\nisolatedPciDevices = [\"01:00.0\"]"), "nixosVms[0].pciDevices[0].iommu", "yes is not an IOMMU type", Some("yes")),
        case("pci unknown option", v("pciDevices = [{ path = \"01:00.0\", guest_address = \"00:05.0\" }]"), "nixosVms[0].pciDevices[0].guest_address", "did you mean \"guest-address\"?", Some("\"00:05.0\"")),
        // --- shared directories and disks
        case("shared dir tags collide", v("sharedDirectories = [{ path = \"/a\", tag = \"t\" }, { path = \"/b\", tag = \"t\" }]"), "nixosVms[0].sharedDirectories[1].tag", "tag \"t\" is already used by sharedDirectories[0]", Some("\"t\"")),
        case("shared dir tag home", v("sharedDirectories = [{ path = \"/a\", tag = \"home\" }]"), "nixosVms[0].sharedDirectories[0].tag", "tag \"home\" is used by the shared home", Some("\"home\"")),
        case("shared dir tag missing", v("sharedDirectories = [{ path = \"/a\" }]"), "nixosVms[0].sharedDirectories[0].tag", "is required", None),
        case("shared dir option typo", v("sharedDirectories = [{ path = \"/a\", tag = \"t\", cahce = \"auto\" }]"), "nixosVms[0].sharedDirectories[0].cahce", "did you mean \"cache\"?", Some("\"auto\"")),
        case("shared dir path colon", v("sharedDirectories = [{ path = \"/a:b\", tag = \"t\" }]"), "nixosVms[0].sharedDirectories[0].path", "contains ':'", Some("\"/a:b\"")),
        case("shared home relative", v("sharedHome = \"home/a\""), "nixosVms[0].sharedHome", "\"home/a\" is not an absolute path", Some("\"home/a\"")),
        case("shared home wrong type", v("sharedHome = 1"), "nixosVms[0].sharedHome", "expected true, false or a host directory path", Some("1")),
        case("disk path missing", v("additionalDisks = [{ ro = true }]"), "nixosVms[0].additionalDisks[0].path", "is required", None),
        case("disk option typo", v("additionalDisks = [{ path = \"/d\", block_siz = 4096 }]"), "nixosVms[0].additionalDisks[0].block_siz", "did you mean \"block-size\"?", Some("4096")),
        case("disk path comma", v("additionalDisks = [\"/d,ro\"]"), "nixosVms[0].additionalDisks[0].path", "contains ','", Some("\"/d,ro\"")),
        case("disk marked root", v("additionalDisks = [{ path = \"/d\", root = true }]"), "nixosVms[0].additionalDisks[0].root", "only rootDisk is the root disk", None),
        case("root disk ro option", v("").replace("rootDisk = \"/r\"", "rootDisk = { path = \"/r\", ro = false }"), "nixosVms[0].rootDisk.ro", "use rootDiskReadonly", None),
        case("disk format", v("additionalDisks = [{ path = \"/d\", format = \"vmdk\" }]"), "nixosVms[0].additionalDisks[0].format", "vmdk is not a disk format", Some("vmdk")),
        // --- GPU, sound, vhost-user
        case("gpu width alone", v("gpu = { width = 1920 }"), "nixosVms[0].gpu", "width and height go together", None),
        case("gpu option typo", v("gpu = { contexttypes = \"cross-domain\" }"), "nixosVms[0].gpu.contexttypes", "did you mean \"context-types\"?", Some("\"cross-domain\"")),
        case("gpu value comma", v("gpu = { context-types = \"a,b\" }"), "nixosVms[0].gpu.context-types", "contains a ',', quote or bracket", Some("a,b")),
        case("sound unknown backend", v("sound = { backend = \"jack\" }"), "nixosVms[0].sound.backend", "", Some("\"jack\"")),
        case("sound capture not a bool", v("sound = { backend = \"pulse\", capture = \"yes\" }"), "nixosVms[0].sound.capture", "", Some("\"yes\"")),
        case("sound unknown option", v("sound = { backend = \"pulse\", latency = 10 }"), "nixosVms[0].sound.latency", "the sound options are \"backend\" and \"capture\"", Some("10")),
        case("vhost-user type", v("vhostUser = [{ type = \"snd\", socket = \"/s\" }]"), "nixosVms[0].vhostUser[0].type", "\"snd\" is not a crosvm vhost-user device type", Some("\"snd\"")),
        case("vhost-user socket missing", v("vhostUser = [{ type = \"net\" }]"), "nixosVms[0].vhostUser[0].socket", "is required", None),
        case("desktop entry exec missing", v("guestDesktopEntries = [{ name = \"Firefox\" }]"), "nixosVms[0].guestDesktopEntries[0].exec", "is required", None),
        // --- QEMU VMs: what QEMU cannot honour is an error, never dropped
        case("qemu with gpu options", v("vmm = \"qemu\"\nsound = false\ngpu = { context-types = \"cross-domain\" }"), "nixosVms[0].gpu", "QEMU VMs have no virtual GPU (their windows reach the host through waypipe over vsock), so crosvm's --gpu options do not apply: set gpu = true", None),
        // --- gate
        case("gate global with a capital", v("gate.allowGlobals = [\"Wl_seat\"]"), "nixosVms[0].gate.allowGlobals[0]", "is not a Wayland interface name: only a-z, 0-9 and _", Some("\"Wl_seat\"")),
        case("gate global with a dot", v("gate.denyGlobals = [\"wp.viewporter\"]"), "nixosVms[0].gate.denyGlobals[0]", "is not a Wayland interface name", Some("\"wp.viewporter\"")),
        case("gate global empty", v("gate.denyGlobals = [\"\"]"), "nixosVms[0].gate.denyGlobals[0]", "a Wayland interface name has 1 to 64 characters", Some("\"\"")),
        case("gate global twice", v("gate.allowGlobals = [\"wp_viewporter\", \"wp_viewporter\"]"), "nixosVms[0].gate.allowGlobals[1]", "is listed twice", Some("\"wp_viewporter\"")),
        case("gate allows screencopy", v("gate.allowGlobals = [\"zwlr_screencopy_manager_v1\"]"), "nixosVms[0].gate.allowGlobals[0]", "cannot allow zwlr_screencopy_manager_v1: it is high-risk", Some("\"zwlr_screencopy_manager_v1\"")),
        case("gate allows data-control", v("gate.allowGlobals = [\"zwlr_data_control_manager_v1\"]"), "nixosVms[0].gate.allowGlobals[0]", "cannot allow zwlr_data_control_manager_v1", Some("\"zwlr_data_control_manager_v1\"")),
        case("gate denies wl_seat", v("gate.denyGlobals = [\"wl_seat\"]"), "nixosVms[0].gate.denyGlobals[0]", "cannot deny wl_seat: it is required", Some("\"wl_seat\"")),
        case("gate unknown global", v("gate.allowGlobals = [\"zz_made_up_v1\"]"), "nixosVms[0].gate.allowGlobals[0]", "unknown interface \"zz_made_up_v1\": the gate hides every global it does not know", Some("\"zz_made_up_v1\"")),
        case("gate global allowed and denied", v("gate = { allowGlobals = [\"wp_viewporter\"], denyGlobals = [\"wp_viewporter\"] }"), "nixosVms[0].gate.denyGlobals[0]", "is in both allowGlobals and denyGlobals", Some("\"wp_viewporter\"")),
        case("gate unknown key", v("gate.colour = \"red\""), "nixosVms[0].gate.colour", "unknown", Some("\"red\"")),
        case("gate frame not a bool", v("gate.frame = \"yes\""), "nixosVms[0].gate.frame", "expected", Some("\"yes\"")),
        case("qemu with sound", v("vmm = \"qemu\"\ngpu = false"), "nixosVms[0].sound", "QEMU 7.2 has no vhost-user sound device: set sound = false", None),
        case("qemu with pci", q("pciDevices = [{ path = \"01:00.0\" }]").replace("user = \"alice\"", "user = \"alice\"\nisolatedPciDevices = [\"01:00.0\"]"), "nixosVms[0].pciDevices", "PCI passthrough is only planned for crosvm VMs", None),
        case("qemu with crosvm args", q("crosvm.extraRunArgs = [\"--no-usb\"]"), "nixosVms[0].crosvm.extraRunArgs", "only applies to crosvm VMs: this VM uses QEMU (use qemu.extraArgs)", None),
        case("qemu disk option", q("additionalDisks = [{ path = \"/d\", id = \"data\" }]"), "nixosVms[0].additionalDisks[0].id", "QEMU VMs do not support the disk option \"id\"", Some("data")),
        case("qemu shared dir p9", q("sharedDirectories = [{ path = \"/s\", tag = \"s\", type = \"p9\" }]"), "nixosVms[0].sharedDirectories[0].type", "QEMU VMs share directories over virtio-fs only", Some("p9")),
        case("qemu shared dir dax", q("sharedDirectories = [{ path = \"/s\", tag = \"s\", dax = true }]"), "nixosVms[0].sharedDirectories[0].dax", "virtiofsd (QEMU VMs) has no equivalent of \"dax\"", Some("true")),
        case("qemu shared dir acl", q("sharedDirectories = [{ path = \"/s\", tag = \"s\", posix_acl = true }]"), "nixosVms[0].sharedDirectories[0].posix_acl", "virtiofsd cannot combine POSIX ACLs", Some("true")),
        case("qemu uidmap overlap", q("sharedDirectories = [{ path = \"/s\", tag = \"s\", uidmap = \"0 0 10,5 100 1\" }]"), "nixosVms[0].sharedDirectories[0].uidmap", "guest ranges overlap", Some("0 0 10,5 100 1")),
        case("qemu vhost-user fs", q("vhostUser = [{ type = \"fs\", socket = \"/s\" }]"), "nixosVms[0].vhostUser[0].type", "use sharedDirectories (vmsilo starts virtiofsd itself)", Some("\"fs\"")),
        case("qemu vhost-user option", q("vhostUser = [{ type = \"net\", socket = \"/s\", max-queue-size = 256 }]"), "nixosVms[0].vhostUser[0].max-queue-size", "is a crosvm --vhost-user option; QEMU VMs take none", Some("256")),
        // --- JSON as the NixOS module writes it
        json_case("json nested typo", r#"{"user":"alice","nixosVms":[{"name":"banking","kernel":"/k","initramfs":"/i","rootDisk":"/r","autoShutdown":{"enable":true,"afterr":5}}]}"#, "nixosVms[0].autoShutdown.afterr", "did you mean \"after\"?", Some("5")),
        json_case("json float memory", r#"{"user":"alice","nixosVms":[{"name":"banking","memory":1024.5,"kernel":"/k","initramfs":"/i","rootDisk":"/r"}]}"#, "nixosVms[0].memory", "1024.5 is not a whole number", Some("1024.5")),
        json_case("json null name", r#"{"user":"alice","nixosVms":[{"name":null,"kernel":"/k","initramfs":"/i","rootDisk":"/r"}]}"#, "nixosVms[0].name", "expected a string, found null", Some("null")),
        json_case("json snake case", r#"{"user":"alice","host_networking":{}}"#, "host_networking", "did you mean \"hostNetworking\"?", Some("{}")),
    ]
}

fn problems(c: &Case) -> Vec<Diagnostic> {
    match load_str(&c.text, c.format) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(d)) => d.0,
        Err(e @ ConfigError::Syntax { .. }) => {
            panic!("{}: syntax error in the test case: {e}", c.name)
        }
    }
}

#[test]
fn test_invalid_configurations_are_rejected_with_path_value_and_message() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let diags = problems(c);
        let found = diags.iter().any(|d| {
            d.full_path() == c.path
                && d.to_string().contains(c.message)
                && c.value.is_none_or(|v| d.value.as_deref() == Some(v))
        });
        if !found {
            let got: Vec<String> = diags
                .iter()
                .map(|d| format!("  {} | {} | value {:?}", d.full_path(), d, d.value))
                .collect();
            failures.push(format!(
                "case {:?}: expected {} containing {:?} (value {:?}); got:\n{}",
                c.name,
                c.path,
                c.message,
                c.value,
                got.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn test_diagnostics_name_the_vm_in_their_text() {
    let text = v("[nixosVms.network.interfaces.wan]\ntype = \"tap\"\ntap = { hostAddress = \"10.0.0.254/24\", bridge = \"br0\" }")
        .replace("name = \"a\"", "name = \"banking\"");
    let diags = problems(&Case {
        name: "display",
        text,
        format: Format::Toml,
        path: "",
        message: "",
        value: None,
    });
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(
        diags[0].to_string().starts_with(
            "VM \"banking\": network.interfaces.wan.tap: hostAddress and bridge are mutually exclusive"
        ),
        "{}",
        diags[0]
    );
    assert_eq!(
        diags[0].location(),
        "nixosVms[0] (VM \"banking\"): network.interfaces.wan.tap"
    );
}

#[test]
fn test_all_problems_are_reported_at_once() {
    let text = v("memory = 16\ncpus = 0\ncolor = \"nope\"\nmemroy = 1");
    let diags = problems(&Case {
        name: "many",
        text,
        format: Format::Toml,
        path: "",
        message: "",
        value: None,
    });
    let paths: Vec<String> = diags.iter().map(|d| d.full_path()).collect();
    for p in [
        "nixosVms[0].memory",
        "nixosVms[0].cpus",
        "nixosVms[0].color",
        "nixosVms[0].memroy",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
}

#[test]
fn test_syntax_errors_carry_the_position() {
    let toml = load_str("user = \"a\"\nnixosVms = [\n", Format::Toml).expect_err("bad TOML");
    assert!(
        matches!(toml, ConfigError::Syntax { format: "TOML", .. }),
        "{toml}"
    );
    assert!(toml.to_string().contains("line 2"), "{toml}");
    let json = load_str("{\"user\": }", Format::Json).expect_err("bad JSON");
    assert!(json.to_string().contains("line 1 column 10"), "{json}");
}

#[test]
fn test_reading_problems_are_not_reported_twice() {
    // Each configuration has exactly one mistake; the rule that would trip over the default
    // put in its place is skipped.
    let one_problem = [
        (
            "kernel wrong type",
            v("").replace("kernel = \"/k\"", "kernel = 5"),
            "nixosVms[0].kernel",
        ),
        ("user missing", BASE_VM.to_owned(), "user"),
        (
            "interface type typo",
            v("[nixosVms.network.interfaces.wan]\ntype = \"tapp\""),
            "nixosVms[0].network.interfaces.wan.type",
        ),
        (
            "name wrong type",
            v2("", "dependsOn = [\"a\"]").replace("name = \"a\"", "name = 7"),
            "nixosVms[0].name",
        ),
    ];
    for (what, text, path) in one_problem {
        let diags = problems(&Case {
            name: what,
            text,
            format: Format::Toml,
            path: "",
            message: "",
            value: None,
        });
        let paths: Vec<String> = diags.iter().map(|d| d.full_path()).collect();
        assert_eq!(paths, [path], "{what}: {diags:?}");
    }
}

#[test]
fn test_an_unreadable_vm_keeps_the_positions_of_the_others() {
    let text = r#"{"user":"alice","nixosVms":[1,{"name":"b","memory":1,"kernel":"/k","initramfs":"/i","rootDisk":"/r"}]}"#;
    let diags = problems(&Case {
        name: "positions",
        text: text.into(),
        format: Format::Json,
        path: "",
        message: "",
        value: None,
    });
    let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "nixosVms[0]: expected a table (object), found a number (1)",
            "VM \"b\": memory: 1 is out of range: expected 64 to 1048576 MiB",
        ]
    );
    assert_eq!(diags[1].full_path(), "nixosVms[1].memory");
}
