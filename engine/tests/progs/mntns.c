/* A container-like mount namespace a restore must rebuild
 * (engine/tests/mount_ns.rs). Run as pid 1 of its own pid and mount
 * namespaces (unshare --mount --pid --fork):
 *
 *   mntns run ROOTFS HOSTDIR [sys] [hold] [ro]
 *       makes every mount private, bind-mounts ROOTFS onto itself, mounts
 *       below it: proc at /proc, a tmpfs at /tmp holding /tmp/hello
 *       ("hello from tmpfs") and /tmp/sub/deep (4096 bytes of 'x'), a
 *       tmpfs at /dev (with a /dev/null node, its stdio) with a devpts (newinstance) at /dev/pts, an mqueue
 *       at /dev/mqueue and a tmpfs at /dev/shm holding `marker`, HOSTDIR
 *       bind-mounted at /data (a host directory: an external mount),
 *       with `sys` a sysfs read-only at /sys; then pivot_root's into it
 *       and detaches the old root, then execs /mntns (ROOTFS/mntns: it
 *       must be there) as `mntns in [sys] [hold] [ro]`, as a container's init
 *       starts inside its root. With `hold` it keeps /tmp/hello open
 *       (fd 10) and checks the fd's contents every tick too. With `ro`
 *       a tmpfs at /ro holding /ro/file ("read-only"), its superblock then
 *       remounted read-only; checked every tick too.
 *       Appends `tick N ok` or `FAIL ...` to /data/progress.log (HOSTDIR's
 *       progress.log) every 100 ms; creates /data/ready once set up.
 *       Every tick: /proc/self/stat says pid 1, /proc/mounts lists /tmp,
 *       /dev/shm, /dev/pts, /dev/mqueue, /data (and /sys), the files in
 *       the tmpfs mounts are intact, /data/marker reads "host", and it
 *       writes /tmp/tick with the tick number and reads it back.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int logfd = -1;
static int ro;

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (logfd < 0 || write(logfd, buf, n) != n)
		_exit(3);
}

static void die(const char *what)
{
	fprintf(stderr, "mntns: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void mnt(const char *src, const char *dst, const char *fs, unsigned long fl, const char *data)
{
	if (mount(src, dst, fs, fl, data) < 0) {
		fprintf(stderr, "mntns: mount %s on %s (%s): %s\n", src, dst, fs ? fs : "-", strerror(errno));
		exit(1);
	}
}

static void put(const char *path, const char *s, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, s, n) != (ssize_t)n)
		die(path);
	close(fd);
}

/* the contents of path (at most cap-1 bytes), or NULL */
static char *get(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return NULL;
	ssize_t n = read(fd, buf, cap - 1);
	close(fd);
	if (n < 0)
		return NULL;
	buf[n] = 0;
	return buf;
}

static const char *deep(void)
{
	static char b[4096];
	memset(b, 'x', sizeof(b));
	return b;
}

static const char *check(int sys, int hold)
{
	static char buf[65536];
	if (!get("/proc/self/stat", buf, sizeof(buf)) || strncmp(buf, "1 (", 3))
		return "/proc/self/stat does not say pid 1 (proc not mounted?)";
	if (!get("/proc/self/mounts", buf, sizeof(buf)))
		return "no /proc/self/mounts";
	const char *want[] = {" /tmp tmpfs ", " /dev tmpfs ", " /dev/shm tmpfs ", " /dev/pts devpts ", " /dev/mqueue mqueue ", " /data ", " /proc proc ", sys ? " /sys sysfs ro" : NULL};
	for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (want[i] && !strstr(buf, want[i])) {
			static char m[128];
			snprintf(m, sizeof(m), "/proc/self/mounts lacks \"%s\"", want[i]);
			return m;
		}
	if (ro && !strstr(buf, " /ro tmpfs ro,"))
		return "/proc/self/mounts lacks a read-only tmpfs at /ro";
	if (!get("/tmp/hello", buf, sizeof(buf)) || strcmp(buf, "hello from tmpfs"))
		return "/tmp/hello changed";
	if (!get("/tmp/sub/deep", buf, sizeof(buf)) || strlen(buf) != 4096 || memcmp(buf, deep(), 4096))
		return "/tmp/sub/deep changed";
	if (!get("/dev/shm/marker", buf, sizeof(buf)) || strcmp(buf, "shm"))
		return "/dev/shm/marker changed";
	if (!get("/data/marker", buf, sizeof(buf)) || strncmp(buf, "host", 4))
		return "/data/marker does not read host";
	if (access("/dev/pts/ptmx", F_OK))
		return "no /dev/pts/ptmx";
	if (ro && (!get("/ro/file", buf, sizeof(buf)) || strcmp(buf, "read-only")))
		return "/ro/file changed";
	if (hold) {
		char b[64];
		ssize_t n = pread(10, b, sizeof(b) - 1, 0);
		if (n != 16 || memcmp(b, "hello from tmpfs", 16))
			return "fd 10 does not read /tmp/hello";
		struct stat a, c;
		if (fstat(10, &a) || stat("/tmp/hello", &c) || a.st_ino != c.st_ino || a.st_dev != c.st_dev)
			return "fd 10 is not /tmp/hello of the /tmp mount";
	}
	return NULL;
}

static int loop(int sys, int hold);

int main(int argc, char **argv)
{
	int in = argc >= 2 && !strcmp(argv[1], "in");
	if (!in && (argc < 4 || strcmp(argv[1], "run"))) {
		fprintf(stderr, "usage: mntns run ROOTFS HOSTDIR [sys] [hold] [ro]\n");
		return 2;
	}
	int sys = 0, hold = 0;
	for (int i = in ? 2 : 4; i < argc; i++) {
		sys |= !strcmp(argv[i], "sys");
		hold |= !strcmp(argv[i], "hold");
		ro |= !strcmp(argv[i], "ro");
	}
	if (getpid() != 1) {
		fprintf(stderr, "mntns: must be pid 1 of its own pid namespace\n");
		return 2;
	}
	if (in)
		return loop(sys, hold);
	const char *root = argv[2];
	mnt(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
	mnt(root, root, NULL, MS_BIND, NULL);
	if (chdir(root))
		die("chdir rootfs");
	const char *dirs[] = {"proc", "tmp", "dev", "data", "sys", "old"};
	for (unsigned i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
		mkdir(dirs[i], 0755);
	mnt("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mnt("tmpfs", "tmp", "tmpfs", MS_NOSUID, "size=16m,mode=1777");
	put("tmp/hello", "hello from tmpfs", 16);
	mkdir("tmp/sub", 0700);
	put("tmp/sub/deep", deep(), 4096);
	mnt("tmpfs", "dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k");
	if (mknod("dev/null", S_IFCHR | 0666, makedev(1, 3)))
		die("mknod dev/null");
	mkdir("dev/pts", 0755);
	mkdir("dev/shm", 01777);
	mkdir("dev/mqueue", 0755);
	mnt("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620");
	mnt("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k");
	put("dev/shm/marker", "shm", 3);
	mnt("mqueue", "dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mnt(argv[3], "data", NULL, MS_BIND, NULL);
	if (sys) {
		mnt("sysfs", "sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL);
	}
	if (ro) {
		mkdir("ro", 0755);
		mnt("tmpfs", "ro", "tmpfs", MS_NOSUID, "size=1m");
		put("ro/file", "read-only", 9);
		mnt(NULL, "ro", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID, NULL);
	}
	if (syscall(SYS_pivot_root, ".", "old"))
		die("pivot_root");
	if (chdir("/"))
		die("chdir /");
	if (umount2("/old", MNT_DETACH))
		die("umount old root");
	rmdir("/old");
	char *args[] = {"mntns", "in", sys ? "sys" : "-", hold ? "hold" : "-", ro ? "ro" : "-", NULL};
	execv("/mntns", args);
	die("exec /mntns");
}

static int loop(int sys, int hold)
{
	logfd = open("/data/progress.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0)
		die("/data/progress.log");
	if (hold) {
		int fd = open("/tmp/hello", O_RDONLY);
		if (fd < 0 || dup2(fd, 10) != 10)
			die("hold /tmp/hello");
		close(fd);
	}
	int nul = open("/dev/null", O_RDONLY);
	if (nul >= 0) {
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(nul, 2);
		close(nul);
	}
	put("/data/ready", "", 0);
	for (unsigned long tick = 1;; tick++) {
		const char *bad = check(sys, hold);
		char b[64];
		if (!bad) {
			int n = snprintf(b, sizeof(b), "%lu", tick);
			put("/tmp/tick", b, n);
			char r[64];
			if (!get("/tmp/tick", r, sizeof(r)) || strcmp(r, b))
				bad = "/tmp/tick does not read back";
		}
		if (bad)
			say("FAIL tick %lu: %s", tick, bad);
		else
			say("tick %lu ok", tick);
		struct timespec ts = {0, 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}
