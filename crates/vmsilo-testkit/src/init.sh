#!/bin/sh
# /init of vmsilo test guests, written by vmsilo-testkit (crates/vmsilo-testkit/src/init.sh).
#
# Runs as PID 1 from the initramfs. Mounts the pseudo file systems, loads the modules listed in
# /etc/vmsilo/modules (in modules.dep order), applies the vmsilo.* kernel parameters, starts the
# guest agent when the image has one, sources /etc/vmsilo/init.d/*.sh, prints VMSILO-READY (or
# VMSILO-INIT-FAILED after a setup error) and then keeps an interactive shell on the console
# for the test harness. The harness powers the guest off with `poweroff -f`; the ACPI power
# button does the same when the image has the modules `button` and `evdev`.
#
# Kernel parameters (all optional, repeatable where it makes sense):
#   vmsilo.ifname=<name>,<mac>              rename the interface with that MAC to <name>
#   vmsilo.addr=<name>,<cidr>               add an IPv4 or IPv6 address, bring <name> up
#   vmsilo.route=<name>,<dest-cidr>,<gw>    add a route (<dest-cidr> may be "default")
#   vmsilo.nameserver=<ip>                  add a line to /etc/resolv.conf
#   vmsilo.autoshutdown=<secs>              read by the agent itself, ignored here
#   vmsilo.test.noagent                     do not start /bin/vmsilo-guest even if present

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=vt100

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp /run /root /var/log
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

failed=
log() { echo "vmsilo-init: $*"; }
fail() { echo "vmsilo-init: error: $*"; failed=1; }

# No duplicate address detection: test addresses are unique and must work at once.
for f in /proc/sys/net/ipv6/conf/all/accept_dad /proc/sys/net/ipv6/conf/default/accept_dad; do
	[ -w "$f" ] && echo 0 >"$f"
done

while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/vmsilo/$m" || fail "insmod $m failed"
done </etc/vmsilo/modules

ip link set lo up

cmdline=$(cat /proc/cmdline)

iface_by_mac() {
	want=$(echo "$1" | tr 'A-F' 'a-f')
	for d in /sys/class/net/*; do
		[ "$(cat "$d/address" 2>/dev/null)" = "$want" ] && { basename "$d"; return 0; }
	done
	return 1
}

# Pass 1: interface names.
for arg in $cmdline; do
	case "$arg" in
	vmsilo.ifname=*)
		v=${arg#vmsilo.ifname=}
		name=${v%%,*}
		mac=${v#*,}
		case "$mac" in
		[0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F]) ;;
		*) fail "$arg: expected vmsilo.ifname=<name>,<mac>"; continue ;;
		esac
		if cur=$(iface_by_mac "$mac"); then
			if [ "$cur" != "$name" ]; then
				ip link set dev "$cur" name "$name" || fail "$arg: renaming $cur to $name failed"
			fi
		else
			fail "$arg: no network interface has MAC $mac"
		fi
		;;
	esac
done

# Pass 2: addresses.
for arg in $cmdline; do
	case "$arg" in
	vmsilo.addr=*)
		v=${arg#vmsilo.addr=}
		name=${v%%,*}
		cidr=${v#*,}
		if [ ! -d "/sys/class/net/$name" ]; then
			fail "$arg: no network interface named $name"
			continue
		fi
		[ -w "/proc/sys/net/ipv6/conf/$name/accept_dad" ] && echo 0 >"/proc/sys/net/ipv6/conf/$name/accept_dad"
		ip link set dev "$name" up || fail "$arg: bringing $name up failed"
		ip addr add "$cidr" dev "$name" || fail "$arg: adding address $cidr failed"
		;;
	esac
done

# Pass 3: routes, then name servers.
for arg in $cmdline; do
	case "$arg" in
	vmsilo.route=*)
		v=${arg#vmsilo.route=}
		name=${v%%,*}
		rest=${v#*,}
		dest=${rest%%,*}
		gw=${rest#*,}
		if [ "$dest" = "$rest" ] || [ -z "$gw" ]; then
			fail "$arg: expected vmsilo.route=<name>,<dest-cidr>,<gateway>"
			continue
		fi
		case "$gw" in *:*) fam=-6 ;; *) fam=-4 ;; esac
		ip $fam route add "$dest" via "$gw" dev "$name" || fail "$arg: adding the route failed"
		;;
	vmsilo.nameserver=*)
		echo "nameserver ${arg#vmsilo.nameserver=}" >>/etc/resolv.conf
		;;
	esac
done

# The guest agent reads its own settings from /proc/cmdline and listens on vsock port 5000.
case " $cmdline " in
*" vmsilo.test.noagent "*) ;;
*)
	if [ -x /bin/vmsilo-guest ]; then
		/bin/vmsilo-guest </dev/null >/run/vmsilo-guest.log 2>&1 &
		log "started vmsilo-guest (pid $!, log /run/vmsilo-guest.log)"
	fi
	;;
esac

# The ACPI power button (QMP system_powerdown, crosvm "Powerbtn") powers the guest off, as on
# a real system: busybox acpid runs /etc/acpi/PWRF/00000080. Needs the modules `button` and
# `evdev` in the image (ImageSpec::module); without them the button does nothing.
if [ -d /sys/module/button ] && ls /dev/input/event* >/dev/null 2>&1; then
	mkdir -p /etc/acpi/PWRF
	printf '#!/bin/sh\nsync\npoweroff -f\n' >/etc/acpi/PWRF/00000080
	chmod 755 /etc/acpi/PWRF/00000080
	acpid -l /run/acpid.log || fail "acpid did not start"
fi

for f in /etc/vmsilo/init.d/*.sh; do
	[ -f "$f" ] || continue
	. "$f" || fail "init hook $f failed"
done

# Keep kernel messages off the console from here on so command output stays clean; they
# remain readable with `dmesg`.
dmesg -n 1
stty cols 1000 2>/dev/null

if [ -n "$failed" ]; then
	echo "VMSILO-INIT-FAILED"
else
	echo "VMSILO-READY uptime=$(cut -d' ' -f1 /proc/uptime)"
fi

# An interactive shell on the console, respawned if it exits. No prompt: the harness reads
# output between markers. Do NOT turn echo off (busybox ash then falls back to fgets(), which a
# SIGCHLD turns into EOF).
export PS1=
while :; do
	setsid cttyhack sh
	sleep 1 # never spin if the shell cannot start
done
