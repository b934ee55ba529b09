/* UTS and IPC namespace state a restore must keep (engine/tests/uts_ipc.rs).
 * Run as pid 1 of its own pid namespace with its own uts and ipc
 * namespaces (unshare --pid --uts --ipc --fork). Appends `tick N ok` or
 * `FAIL ...` to ./progress.log every 100 ms; creates ./ready once set up.
 *
 *   utsipc run HOST DOMAIN [shm] [sem] [msg]
 *       sets the hostname and NIS domain name (refused unless its uts
 *       namespace differs from $UTSIPC_HOST_UTS, the starter's
 *       /proc/self/ns/uts link: never the host's own),
 *       and with `shm` creates SysV shared memory segments (key 0x5eed1,
 *       300 KiB, patterned, word 0 a marker; and an IPC_PRIVATE one of
 *       one page), `sem` a set of 3 semaphores with values 7, 0, 42, `msg`
 *       a message queue holding two messages. Every tick: uname's names
 *       unchanged; each segment attached (shmat, never left attached),
 *       its pattern intact, then detached; semaphore values and the
 *       queue's messages (MSG_COPY) as they were. With `attach` (and
 *       shm) the big segment also stays attached read-write: every tick
 *       its pattern is checked through that mapping, and the tick number
 *       written into word 1 there must be what a fresh attachment sees;
 *       `split` makes the attachment's last page read-only (two VMAs).
 *       `sysctl` sets its namespace's kernel/msgmni to 1234, kernel/sem
 *       to "250 64000 32 200" and fs/mqueue/msg_max to 20; they must stay.
 *       `mq` leaves a POSIX message queue /utsipc in the namespace (no
 *       fd kept open).
 *   utsipc peek               prints the marker word of segment 0x5eed1
 *   utsipc poke VALUE         writes VALUE into that marker word
 *   (peek/poke run with nsenter --ipc into the namespace to look at)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mqueue.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_COPY
#define MSG_COPY 040000
#endif
#define KEY 0x5eed1
#define SEGSZ (300 * 1024)

static int logfd = -1;

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
	if (write(logfd, buf, n) != n)
		_exit(3);
}

/* word i of a segment; word 1 is the tick word of `attach`; the 33rd
 * page of a big one is never written (a hole: reads as zeros) */
static uint32_t pat(size_t i, uint32_t seed)
{
	if (i == 1 || (i >= (128 * 1024) / 4 && i < (132 * 1024) / 4))
		return 0;
	return (uint32_t)(i * 2654435761u) ^ seed;
}

/* attach, check words 1.. against the pattern, detach */
static const char *check_seg(int id, size_t size, uint32_t seed)
{
	uint32_t *p = shmat(id, NULL, SHM_RDONLY);
	if (p == (void *)-1)
		return "shmat";
	const char *bad = NULL;
	for (size_t i = 2; i < size / 4; i++)
		if (p[i] != pat(i, seed)) {
			bad = "pattern";
			break;
		}
	shmdt(p);
	return bad;
}

static int put_sysctl(const char *path, const char *v)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	int r = write(fd, v, strlen(v)) == (ssize_t)strlen(v) ? 0 : -1;
	close(fd);
	return r;
}

/* the sysctl's value, spaces and tabs as single spaces */
static int sysctl_is(const char *path, const char *want)
{
	char b[128] = { 0 }, n[128] = { 0 };
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t r = read(fd, b, sizeof(b) - 1);
	close(fd);
	if (r <= 0)
		return 0;
	size_t k = 0;
	for (ssize_t i = 0; i < r && k < sizeof(n) - 1; i++) {
		char c = b[i] == '\t' ? ' ' : b[i];
		if (c == '\n' || (c == ' ' && (k == 0 || n[k - 1] == ' ')))
			continue;
		n[k++] = c;
	}
	return !strcmp(n, want);
}

struct msgbuf_t {
	long mtype;
	char text[64];
};

int main(int argc, char **argv)
{
	if (argc >= 2 && (!strcmp(argv[1], "peek") || !strcmp(argv[1], "poke"))) {
		int id = shmget(KEY, 0, 0);
		if (id < 0) {
			perror("shmget");
			return 1;
		}
		uint32_t *p = shmat(id, NULL, 0);
		if (p == (void *)-1) {
			perror("shmat");
			return 1;
		}
		if (argv[1][1] == 'o')
			p[0] = (uint32_t)strtoul(argv[2], NULL, 0);
		else
			printf("%u\n", p[0]);
		shmdt(p);
		return 0;
	}
	if (argc < 4 || strcmp(argv[1], "run")) {
		fprintf(stderr, "usage: utsipc run HOST DOMAIN [shm] [sem] [msg] | peek | poke VALUE\n");
		return 2;
	}
	logfd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 1;
	char mine[64] = { 0 };
	const char *host = getenv("UTSIPC_HOST_UTS");
	if (readlink("/proc/self/ns/uts", mine, sizeof(mine) - 1) < 0 || !host || !strcmp(mine, host)) {
		say("FAIL start: not in a uts namespace of its own (%s, host %s)", mine, host);
		return 1;
	}
	const char *hn = argv[2], *dn = argv[3];
	if (sethostname(hn, strlen(hn)) || setdomainname(dn, strlen(dn))) {
		say("FAIL start: sethostname: %s", strerror(errno));
		return 1;
	}
	int want_shm = 0, want_sem = 0, want_msg = 0, want_attach = 0, want_split = 0, want_sysctl = 0, want_mq = 0;
	uint32_t *att = NULL;
	for (int i = 4; i < argc; i++) {
		want_attach |= !strcmp(argv[i], "attach");
		want_split |= !strcmp(argv[i], "split");
		want_sysctl |= !strcmp(argv[i], "sysctl");
		want_mq |= !strcmp(argv[i], "mq");
		want_shm |= !strcmp(argv[i], "shm");
		want_sem |= !strcmp(argv[i], "sem");
		want_msg |= !strcmp(argv[i], "msg");
	}
	int shm1 = -1, shm2 = -1, sem = -1, msq = -1;
	if (want_shm) {
		shm1 = shmget(KEY, SEGSZ, IPC_CREAT | IPC_EXCL | 0640);
		shm2 = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
		if (shm1 < 0 || shm2 < 0) {
			say("FAIL start: shmget: %s", strerror(errno));
			return 1;
		}
		uint32_t *p = shmat(shm1, NULL, 0), *q = shmat(shm2, NULL, 0);
		if (p == (void *)-1 || q == (void *)-1) {
			say("FAIL start: shmat: %s", strerror(errno));
			return 1;
		}
		for (size_t i = 1; i < SEGSZ / 4; i++)
			if (pat(i, 0x1111))
				p[i] = pat(i, 0x1111);
		p[0] = 1;
		for (size_t i = 1; i < 4096 / 4; i++)
			q[i] = pat(i, 0x2222);
		shmdt(p);
		shmdt(q);
		if (want_attach) {
			att = shmat(shm1, NULL, 0);
			if (att == (void *)-1) {
				say("FAIL start: shmat to keep: %s", strerror(errno));
				return 1;
			}
			/* its last page read-only: two VMAs of one attachment */
			if (want_split && mprotect((char *)att + SEGSZ - 4096, 4096, PROT_READ)) {
				say("FAIL start: mprotect: %s", strerror(errno));
				return 1;
			}
		}
	}
	if (want_sem) {
		sem = semget(IPC_PRIVATE, 3, IPC_CREAT | 0600);
		unsigned short v[3] = { 7, 0, 42 };
		if (sem < 0 || semctl(sem, 0, SETALL, v) < 0) {
			say("FAIL start: sem: %s", strerror(errno));
			return 1;
		}
	}
	if (want_msg) {
		msq = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
		struct msgbuf_t m1 = { 5, "first message" }, m2 = { 9, "second, longer message" };
		if (msq < 0 || msgsnd(msq, &m1, strlen(m1.text) + 1, 0) || msgsnd(msq, &m2, strlen(m2.text) + 1, 0)) {
			say("FAIL start: msg: %s", strerror(errno));
			return 1;
		}
	}
	if (want_sysctl && (put_sysctl("/proc/sys/kernel/msgmni", "1234") || put_sysctl("/proc/sys/kernel/sem", "250 64000 32 200") ||
			    put_sysctl("/proc/sys/fs/mqueue/msg_max", "20"))) {
		say("FAIL start: sysctl: %s", strerror(errno));
		return 1;
	}
	if (want_mq) {
		mqd_t q = mq_open("/utsipc", O_CREAT | O_RDWR, 0600, NULL);
		if (q == (mqd_t)-1) {
			say("FAIL start: mq_open: %s", strerror(errno));
			return 1;
		}
		mq_close(q);
	}
	close(open("ready", O_WRONLY | O_CREAT, 0644));
	for (unsigned long tick = 1;; tick++) {
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		struct utsname u;
		uname(&u);
		if (strcmp(u.nodename, hn) || strcmp(u.domainname, dn)) {
			say("FAIL tick %lu uts: %s/%s, want %s/%s", tick, u.nodename, u.domainname, hn, dn);
			continue;
		}
		if (want_shm) {
			const char *b = check_seg(shm1, SEGSZ, 0x1111);
			if (!b)
				b = check_seg(shm2, 4096, 0x2222);
			if (!b && att) {
				for (size_t i = 2; i < SEGSZ / 4; i++)
					if (att[i] != pat(i, 0x1111)) {
						b = "pattern through the kept attachment";
						break;
					}
				if (!b && tick > 1 && att[1] != tick - 1)
					b = "tick word of the kept attachment";
				att[1] = tick;
				uint32_t *f = shmat(shm1, NULL, SHM_RDONLY);
				if (!b && (f == (void *)-1 || f[1] != tick))
					b = "a fresh attachment does not see the kept one's write";
				if (f != (void *)-1)
					shmdt(f);
			}
			if (b) {
				say("FAIL tick %lu shm: %s: %s", tick, b, strerror(errno));
				continue;
			}
			struct shmid_ds ds;
			if (shmctl(shm1, IPC_STAT, &ds) || ds.shm_segsz != SEGSZ || (ds.shm_perm.mode & 0777) != 0640 ||
			    ds.shm_perm.__key != KEY) {
				say("FAIL tick %lu shm: stat of %d", tick, shm1);
				continue;
			}
		}
		if (want_sysctl && (!sysctl_is("/proc/sys/kernel/msgmni", "1234") || !sysctl_is("/proc/sys/kernel/sem", "250 64000 32 200") ||
				    !sysctl_is("/proc/sys/fs/mqueue/msg_max", "20"))) {
			say("FAIL tick %lu sysctl", tick);
			continue;
		}
		if (want_sem) {
			unsigned short v[3];
			if (semctl(sem, 0, GETALL, v) < 0 || v[0] != 7 || v[1] != 0 || v[2] != 42) {
				say("FAIL tick %lu sem: %s", tick, strerror(errno));
				continue;
			}
		}
		if (want_msg) {
			struct msgbuf_t m;
			ssize_t n0 = msgrcv(msq, &m, sizeof(m.text), 0, IPC_NOWAIT | MSG_COPY);
			int ok0 = n0 > 0 && m.mtype == 5 && !strcmp(m.text, "first message");
			ssize_t n1 = msgrcv(msq, &m, sizeof(m.text), 1, IPC_NOWAIT | MSG_COPY);
			int ok1 = n1 > 0 && m.mtype == 9 && !strcmp(m.text, "second, longer message");
			if (!ok0 || !ok1) {
				say("FAIL tick %lu msg: %s", tick, strerror(errno));
				continue;
			}
		}
		say("tick %lu ok", tick);
	}
}
