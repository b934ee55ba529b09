#!/usr/bin/env bash
# End-to-end test of vma_cherrypick.ko, from nothing:
#
#   1. apt-get download Debian bookworm's kernel image + headers + kbuild
#      (.debs cached in $DEBS) and unpack them with dpkg-deb (nothing is
#      installed, nothing goes to /boot)
#   2. build kmod/src/vma_cherrypick.ko against those headers
#   3. build the static guest programs in kmod/test/, and the engine's
#      `criu` statically (glibc, crt-static) when cargo is here
#   4. pack busybox-static + module + programs into an initramfs whose /init
#      runs the no-module checks, insmods, runs the tests (and with --bench
#      the benchmark), rmmods, checks the kernel log, prints a marker, and
#      powers off
#   5. boot that kernel under qemu-system-x86_64 (TCG) under `timeout`, with
#      oops=panic panic=-1 -no-reboot: an oops ends the VM without a marker.
#
# Exit status: 0 PASS, 1 FAIL (a test failed, oops, no marker, timeout),
# 2 setup error. Prints `N passed, M failed` (every `ok   - ` / `FAIL - `
# line of the guest).
#
# Usage: kmod/test.sh [--bench] [--install-deps] [--accel tcg|kvm|auto]
#                     [--timeout SECS] [--mem MB]
#   --bench   also run the 256 MiB / 1 GiB benchmark (cp_bench) in the guest
#             (adds ~70 s under TCG; the guest gets 3 GiB instead of 1 GiB)
# Env:   KMOD_BENCH=1 is the same as --bench.
#        KVER (default: a kernel already unpacked in $WORK, else the 6.1 version
#        linux-image-amd64 depends on), WORK (build dir, default kmod/build),
#        DEBS (.deb cache, default $WORK/debs), SMP (guest cpus, default 2),
#        KAPPEND (kernel command line), CRIU_STATIC (a static `criu` to put
#        in the guest instead of building one into $WORK/engine-target).
# Runs as root from nothing: missing host packages are apt-get installed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ACCEL=tcg
BOOT_TIMEOUT=300
INSTALL_DEPS=0
BENCH="${KMOD_BENCH:-0}"
MEM=
while [ $# -gt 0 ]; do
	case "$1" in
	--accel) ACCEL="$2"; shift 2 ;;
	--timeout) BOOT_TIMEOUT="$2"; shift 2 ;;
	--install-deps) INSTALL_DEPS=1; shift ;;
	--bench) BENCH=1; shift ;;
	--no-bench) BENCH=0; shift ;;
	--mem) MEM="$2"; shift 2 ;;
	*) echo "unknown argument: $1" >&2; exit 2 ;;
	esac
done

[ -n "$MEM" ] || { [ "$BENCH" = 1 ] && MEM=3072 || MEM=1024; }
WORK="${WORK:-$HERE/build}"
DEBS="${DEBS:-$WORK/debs}"
mkdir -p "$WORK" "$DEBS"
log() { printf '[kmod-test %s] %s\n' "$(date +%T)" "$*"; }
die() { log "SETUP ERROR: $*"; exit 2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
T_ALL=$(now)

# ---------------------------------------------------------------- host deps
HOST_PKGS=(qemu-system-x86 busybox-static cpio kmod gcc-12 make libelf1 libssl3 binutils libc6-dev)
missing_tools() {
	local t
	for t in qemu-system-x86_64 cpio gzip gcc gcc-12 make dpkg-deb timeout readelf; do
		command -v "$t" >/dev/null || echo "$t"
	done
	[ -x /bin/busybox ] && [ "$(readelf -l /bin/busybox 2>/dev/null | grep -c 'program interpreter' || true)" = 0 ] \
		|| echo busybox-static
}
# From nothing (CI): install what is missing when we can (root + apt-get).
if [ "$INSTALL_DEPS" = 0 ] && [ -n "$(missing_tools)" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	log "missing: $(missing_tools | tr '\n' ' ')-> installing host packages"
	INSTALL_DEPS=1
fi
if [ "$INSTALL_DEPS" = 1 ]; then
	log "apt-get install ${HOST_PKGS[*]}"
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get update -q && apt-get install -y -q --no-install-recommends "${HOST_PKGS[@]}"; } \
		>"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; die "apt-get install failed"; }
	APT_UPDATED=1
fi
m="$(missing_tools | tr '\n' ' ')"
[ -z "$m" ] || die "missing: $m(install ${HOST_PKGS[*]}, or run as root / with --install-deps)"
BUSYBOX=/bin/busybox

if [ -z "${KVER:-}" ]; then
	kver_from_apt() {
		apt-cache depends linux-image-amd64 2>/dev/null \
			| sed -n 's/.*Depends: linux-image-\(6\.1\..*-amd64\)$/\1/p' | head -1 || true
	}
	# A kernel already unpacked or cached wins: no network needed then.
	KVER="$(ls -d "$WORK"/kroot-6.1.*-amd64 2>/dev/null | sed 's#.*/kroot-##' | tail -1 || true)"
	[ -n "$KVER" ] || KVER="$(kver_from_apt)"
	if [ -z "$KVER" ] && [ -z "${APT_UPDATED:-}" ] && [ "$(id -u)" = 0 ]; then
		log "apt-get update (to find the bookworm kernel version)"
		apt-get update -q >"$WORK/apt-update.log" 2>&1 || true
		KVER="$(kver_from_apt)"
	fi
	[ -n "$KVER" ] || die "cannot determine KVER (run apt-get update, or set KVER=6.1.0-NN-amd64)"
fi
log "kernel $KVER, work dir $WORK, accel=$ACCEL"

# ---------------------------------------------------------------- kernel + headers
KROOT="$WORK/kroot-$KVER"
KBUILD_DIR="$KROOT/usr/src/linux-headers-$KVER"
VMLINUZ="$KROOT/boot/vmlinuz-$KVER"
if [ ! -f "$VMLINUZ" ] || [ ! -f "$KBUILD_DIR/Module.symvers" ]; then
	t0=$(now)
	common="${KVER%-amd64}-common"
	kbuild_pkg="linux-kbuild-$(echo "$KVER" | cut -d. -f1,2)"
	for p in "linux-image-$KVER" "linux-headers-$KVER" "linux-headers-$common" "$kbuild_pkg"; do
		ls "$DEBS/${p}_"*.deb >/dev/null 2>&1 && continue
		log "apt-get download $p"
		if ! (cd "$DEBS" && apt-get download "$p" >"$WORK/apt-download.log" 2>&1); then
			[ -z "${APT_UPDATED:-}" ] && [ "$(id -u)" = 0 ] || { cat "$WORK/apt-download.log"; die "apt-get download $p failed (apt-get update first?)"; }
			apt-get update -q >"$WORK/apt-update.log" 2>&1 || true
			APT_UPDATED=1
			(cd "$DEBS" && apt-get download "$p" >"$WORK/apt-download.log" 2>&1) \
				|| { cat "$WORK/apt-download.log"; die "apt-get download $p failed"; }
		fi
	done
	rm -rf "$KROOT"; mkdir -p "$KROOT"
	# Only the bzImage from the image package: the guest loads no other module.
	dpkg-deb --fsys-tarfile "$(ls "$DEBS/linux-image-${KVER}_"*.deb | tail -1)" \
		| tar -x -C "$KROOT" "./boot/vmlinuz-$KVER"
	for p in "linux-headers-$KVER" "linux-headers-$common" "$kbuild_pkg"; do
		dpkg-deb -x "$(ls "$DEBS/${p}_"*.deb | tail -1)" "$KROOT"
	done
	log "extracted kernel+headers in $(elapsed "$t0")s"
fi
[ -f "$VMLINUZ" ] || die "no $VMLINUZ"
# The arch headers Makefile includes the common one by absolute /usr/src path:
# point it into $KROOT (idempotent, survives moving $WORK).
sed -i "s#^include .*/usr/src/linux-headers-#include $KROOT/usr/src/linux-headers-#" "$KBUILD_DIR/Makefile"

# ---------------------------------------------------------------- module
MODDIR="$WORK/mod"
rm -rf "$MODDIR"; mkdir -p "$MODDIR"
cp "$HERE/src/vma_cherrypick.c" "$HERE/src/vma_cherrypick.h" "$HERE/src/Kbuild" "$MODDIR/"
t0=$(now)
make -C "$KBUILD_DIR" M="$MODDIR" modules >"$WORK/module-build.log" 2>&1 \
	|| { cat "$WORK/module-build.log"; log "FAIL: module build"; echo "0 passed, 1 failed"; exit 1; }
T_MOD=$(elapsed "$t0")
if grep -Ei 'warning|error' "$WORK/module-build.log" | grep -v 'Skipping BTF generation'; then
	log "(compiler warnings above)"
fi
log "module built in ${T_MOD}s"

# ---------------------------------------------------------------- guest programs
t0=$(now)
for prog in cp_test cp_bench; do
	gcc -static -O2 -Wall -Wextra -Werror -pthread -I"$HERE/src" -o "$WORK/$prog" \
		"$HERE/test/$prog.c" "$HERE/test/cp_util.c" \
		|| { log "FAIL: building $prog"; echo "0 passed, 1 failed"; exit 1; }
done
# criu tfork's guest test: the program it clones, the copy-on-write checker
for prog in tf_prog tf_check; do
	gcc -static -O2 -Wall -Wextra -Werror -o "$WORK/$prog" "$HERE/test/$prog.c" \
		|| { log "FAIL: building $prog"; echo "0 passed, 1 failed"; exit 1; }
done
# The Rust wrapper (engine/src/sys/kmod.rs) against the real module, if cargo is here.
RUST_SMOKE=""
if command -v cargo >/dev/null; then
	if RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q \
		--manifest-path "$HERE/test/rust-smoke/Cargo.toml" \
		--target x86_64-unknown-linux-gnu --target-dir "$WORK/rust-target" \
		>"$WORK/rust-build.log" 2>&1; then
		RUST_SMOKE="$WORK/rust-target/x86_64-unknown-linux-gnu/release/kmod-rust-smoke"
	else
		cat "$WORK/rust-build.log"; log "FAIL: building the Rust smoke test"; echo "0 passed, 1 failed"; exit 1
	fi
else
	log "no cargo: skipping the Rust wrapper smoke test"
fi
# The engine itself (`criu tfork` end to end in the guest): static, so the
# busybox initramfs needs no libraries.
CRIU_GUEST="${CRIU_STATIC:-}"
if [ -z "$CRIU_GUEST" ] && command -v cargo >/dev/null; then
	t1=$(now)
	if RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p engine --bin criu \
		--manifest-path "$HERE/../Cargo.toml" --target x86_64-unknown-linux-gnu \
		--target-dir "$WORK/engine-target" >"$WORK/engine-build.log" 2>&1; then
		CRIU_GUEST="$WORK/engine-target/x86_64-unknown-linux-gnu/release/criu"
		log "static criu built in $(elapsed "$t1")s"
	else
		cat "$WORK/engine-build.log"; log "FAIL: building the static criu"; echo "0 passed, 1 failed"; exit 1
	fi
fi
if [ -n "$CRIU_GUEST" ]; then
	[ "$(readelf -l "$CRIU_GUEST" 2>/dev/null | grep -c 'program interpreter' || true)" = 0 ] \
		|| die "$CRIU_GUEST is not static"
else
	log "no cargo: criu tfork is not run in the guest"
fi
T_TEST=$(elapsed "$t0")

# ---------------------------------------------------------------- initramfs
t0=$(now)
IRD="$WORK/initramfs"
rm -rf "$IRD"; mkdir -p "$IRD"/{bin,sbin,proc,sys,dev,tmp}
cp "$BUSYBOX" "$IRD/bin/busybox"
for a in $("$BUSYBOX" --list); do
	[ -e "$IRD/bin/$a" ] || ln -s busybox "$IRD/bin/$a"
done
cp "$MODDIR/vma_cherrypick.ko" "$WORK/cp_test" "$WORK/cp_bench" "$WORK/tf_prog" "$WORK/tf_check" "$IRD/"
[ -z "$CRIU_GUEST" ] || cp "$CRIU_GUEST" "$IRD/criu"
[ -z "$RUST_SMOKE" ] || cp "$RUST_SMOKE" "$IRD/rust_smoke"
cat >"$IRD/init" <<EOF
#!/bin/busybox sh
export PATH=/bin
BENCH=$BENCH
EOF
cat >>"$IRD/init" <<'EOF'
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
result() { echo "KMODTEST-RESULT: $1"; sync; poweroff -f; sleep 10; }
echo "KMODTEST: guest up, kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s), $(sed -n 's/MemTotal: *//p' /proc/meminfo), uptime $(cut -d' ' -f1 /proc/uptime)s"
echo 8 >/proc/sys/vm/nr_hugepages
/cp_test --no-module
rc0=$?
if [ -x /rust_smoke ]; then /rust_smoke --no-module || rc0=$((rc0 + 1)); fi
if ! insmod /vma_cherrypick.ko; then
	dmesg | tail -20
	result "FAIL (insmod)"
fi
i=0
while [ ! -c /dev/vma_cherrypick ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
/cp_test
rc=$?
if [ -x /rust_smoke ]; then /rust_smoke || rc=$((rc + 1)); fi
# criu tfork end to end, the module loaded: tf_prog cloned twice, its
# memory checked copy-on-write both ways (tf_check), in the host's pid
# namespace (clones forked) and as a namespace init (clones restored,
# their memory cherry-picked: the engine's log says so)
if [ -x /criu ]; then
	mkdir -p /tmp/tf
	/tf_prog /tmp/tf/addr </dev/null >/dev/null 2>&1 &
	tfp=$!
	i=0
	while [ ! -s /tmp/tf/addr ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
	if /criu tfork -t $tfp --copies 2 -D /tmp/tf -v4 -o /tmp/tf/tfork.log >/tmp/tf/clones 2>/tmp/tf/err \
		&& [ "$(wc -l </tmp/tf/clones)" = 2 ]; then
		echo "ok   - criu tfork of $tfp in the guest: clones $(cat /tmp/tf/clones | tr '\n' ' ')"
		grep -E 'source .* paused|tfork of' /tmp/tf/tfork.log | tail -2
		/tf_check $(cat /tmp/tf/addr) $tfp $(cat /tmp/tf/clones) || rc=$((rc + 1))
		# (a source in the host's pid namespace: its clones are forks of it,
		# copy-on-write by the kernel's fork; the module serves namespace inits)
	else
		echo "FAIL - criu tfork in the guest: $(cat /tmp/tf/err)"
		tail -30 /tmp/tf/tfork.log
		rc=$((rc + 1))
	fi
	kill -9 $tfp $(cat /tmp/tf/clones 2>/dev/null) 2>/dev/null
	# a namespace init (pid 1 of its own pid namespace): each clone is
	# restored into a new pid namespace, its private anonymous VMAs
	# cherry-picked from the frozen source through the module (so its
	# pages are the source's frames, copy-on-write)
	mkdir -p /tmp/tfn
	unshare -p -f /tf_prog /tmp/tfn/addr </dev/null >/dev/null 2>&1 &
	up=$!
	i=0
	while [ ! -s /tmp/tfn/addr ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
	tfn=$(cut -d' ' -f1 /proc/$up/task/$up/children)
	if [ -n "$tfn" ] && grep -q 'NSpid:.*[[:space:]]1$' /proc/$tfn/status \
		&& /criu tfork -t $tfn --copies 2 -D /tmp/tfn -v4 -o /tmp/tfn/tfork.log >/tmp/tfn/clones 2>/tmp/tfn/err \
		&& [ "$(wc -l </tmp/tfn/clones)" = 2 ]; then
		echo "ok   - criu tfork of the namespace init $tfn in the guest: clones $(cat /tmp/tfn/clones | tr '\n' ' ')"
		grep -E 'cherry-picked|tfork of' /tmp/tfn/tfork.log | tail -4
		n=0
		for c in $(cat /tmp/tfn/clones); do
			if grep -q 'NSpid:.*[[:space:]]1$' /proc/$c/status; then n=$((n+1)); fi
		done
		if [ $n = 2 ]; then echo "ok   - each clone is pid 1 of a pid namespace"; else echo "FAIL - clones not pid 1 of their pid namespaces"; rc=$((rc + 1)); fi
		if grep -qE '^.*[1-9][0-9]* of [0-9]+ private anonymous VMAs .* cherry-picked' /tmp/tfn/tfork.log; then
			echo "ok   - the clones' VMAs came through the module's cherry-pick (engine log)"
		else
			echo "FAIL - no cherry-picked VMA in the engine log"; rc=$((rc + 1))
		fi
		/tf_check $(cat /tmp/tfn/addr) $tfn $(cat /tmp/tfn/clones) || rc=$((rc + 1))
	else
		echo "FAIL - criu tfork of a namespace init in the guest: $(cat /tmp/tfn/err 2>/dev/null)"
		tail -30 /tmp/tfn/tfork.log 2>/dev/null
		rc=$((rc + 1))
	fi
	kill -9 $tfn $(cat /tmp/tfn/clones 2>/dev/null) 2>/dev/null
fi
[ $rc0 -eq 0 ] || rc=$((rc + 100))
if [ "$BENCH" = 1 ]; then
	/cp_bench || rc=$((rc + 1000))
fi
rmmod vma_cherrypick || rc=$((rc + 10000))
dmesg | grep -E 'vma_cherrypick|BUG|Oops|WARNING|bad rss|Bad page' | tail -20
if dmesg | grep -qE 'BUG:|WARNING:|Oops|bad rss-counter|Bad page|list_add corruption|list_del corruption'; then
	echo "FAIL - kernel log has BUG/WARNING/bad rss-counter/Bad page lines (above)"
	rc=$((rc + 100000))
else
	echo "ok   - kernel log clean: no BUG, WARNING, bad rss-counter or Bad page"
fi
echo "KMODTEST: tainted=$(cat /proc/sys/kernel/tainted) test_rc=$rc uptime $(cut -d' ' -f1 /proc/uptime)s"
if [ $rc -eq 0 ]; then result PASS; else result "FAIL (rc=$rc)"; fi
EOF
chmod +x "$IRD/init"
(cd "$IRD" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 >"$WORK/initramfs.cpio.gz")
T_IRD=$(elapsed "$t0")
log "guest programs built in ${T_TEST}s, initramfs ($(du -h "$WORK/initramfs.cpio.gz" | cut -f1)) in ${T_IRD}s"

# ---------------------------------------------------------------- boot
# /dev/kvm here is a PVM that does not boot stock kernels: TCG by default.
case "$ACCEL" in
auto) if [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; then ACCEL=kvm; else ACCEL=tcg; fi ;;
kvm|tcg) ;;
*) die "bad --accel $ACCEL" ;;
esac
QEMU_ACCEL=(-accel "$ACCEL")
# -cpu max: TCG's default CPU (qemu64) has no XSAVE, whose state the
# engine reads from every thread it dumps or clones (NT_X86_XSTATE)
[ "$ACCEL" = tcg ] && QEMU_ACCEL=(-accel tcg,thread=multi -cpu max)
SMP="${SMP:-2}"

SERIAL_LOG="$WORK/serial-$ACCEL.log"
KAPPEND="${KAPPEND:-console=ttyS0 panic=-1 oops=panic loglevel=5}"
log "booting with $ACCEL, ${MEM} MiB, $SMP cpus (timeout ${BOOT_TIMEOUT}s), serial log: $SERIAL_LOG"
t0=$(now)
set +e
timeout --kill-after=10 "$BOOT_TIMEOUT" qemu-system-x86_64 "${QEMU_ACCEL[@]}" \
	-m "$MEM" -smp "$SMP" -nographic -no-reboot -nodefaults -serial stdio -monitor none \
	-kernel "$VMLINUZ" -initrd "$WORK/initramfs.cpio.gz" \
	-append "$KAPPEND" </dev/null >"$SERIAL_LOG" 2>&1
qrc=$?
set -e
T_BOOT=$(elapsed "$t0")
tr -d '\r' <"$SERIAL_LOG" | grep -v '^$' | sed 's/^/  | /'

# Every guest check prints one `ok   - ...` or `FAIL - ...` line.
N_OK=$(tr -d '\r' <"$SERIAL_LOG" | grep -c '^ok   - ' || true)
N_FAIL=$(tr -d '\r' <"$SERIAL_LOG" | grep -c '^FAIL - ' || true)
SUMMARY="$N_OK passed, $N_FAIL failed"
RESULT="$(tr -d '\r' <"$SERIAL_LOG" | sed -n 's/^KMODTEST-RESULT: //p' | tail -1)"
log "timings: module build ${T_MOD}s, boot+tests+poweroff (${ACCEL}) ${T_BOOT}s, total $(elapsed "$T_ALL")s, qemu rc=$qrc"
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	log "FAIL: qemu timed out after ${BOOT_TIMEOUT}s"
	echo "$N_OK passed, $((N_FAIL + 1)) failed"
	exit 1
fi
if [ "$RESULT" = PASS ] && [ "$N_FAIL" = 0 ] && [ "$N_OK" -gt 0 ]; then
	echo "$SUMMARY"
	log "PASS"
	exit 0
fi
if tr -d '\r' <"$SERIAL_LOG" | grep -qE 'Oops|BUG:|Kernel panic'; then
	log "FAIL: kernel oops/panic in the guest (see above)"
fi
log "FAIL: ${RESULT:-no result marker in serial output}"
[ "$N_FAIL" -gt 0 ] || N_FAIL=1
echo "$N_OK passed, $N_FAIL failed"
exit 1
