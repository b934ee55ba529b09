/* Process and thread state checked every tick, for engine/tests/process_state.rs.
 * Started (as root) with one mode:
 *   creds   - groups, res[ug]id != 0 with kept caps, chosen eff/prm/inh,
 *             ambient and bounding sets, securebits, no_new_privs, two
 *             seccomp filters (one returns an errno, one kills), umask,
 *             personality, lowered rlimits, pdeath signal, child subreaper,
 *             SCHED_BATCH + nice, CPU affinity (the last CPU online, when
 *             there are two or more), I/O priority best-effort level 5.
 *   timers  - ITIMER_REAL/VIRTUAL/PROF, POSIX timers (process-directed and
 *             SIGEV_THREAD_ID at a helper thread), sigaltstack in two
 *             threads, glibc's rseq registration in every thread, a thread
 *             spinning inside an rseq critical section.
 * Writes "tick N ok" or "FAIL tick N what" to ./progress.log, ./ready once
 * set up. In creds mode, when ./trigger-kill appears it calls the killed
 * syscall and must die of it (it logs "FAIL" if it survives).
 * Build: gcc -O2 -static -o pstate pstate.c -lpthread -lrt */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/securebits.h>
#include <grp.h>
#include <sys/fsuid.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int log_fd = -1;
static unsigned long tick;

static void say(const char *fmt, ...)
{
	char buf[300];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(log_fd, buf, n) != n)
		_exit(3);
}

static void fail(const char *what, long got)
{
	say("FAIL tick %lu %s (got %ld, errno %d)", tick, what, got, errno);
	_exit(1);
}

#define CHECK(cond, what, got) do { if (!(cond)) fail(what, (long)(got)); } while (0)

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void touch(const char *name)
{
	int fd = open(name, O_WRONLY | O_CREAT, 0666);
	if (fd >= 0)
		close(fd);
}

/* ---------------- creds mode ---------------- */

#define KEEP_EFF ((1u << CAP_KILL) | (1u << CAP_NET_BIND_SERVICE))
#define KEEP_PRM (KEEP_EFF | (1u << CAP_CHOWN))
#define KEEP_INH (1u << CAP_NET_BIND_SERVICE)
#define ERRNO_NR SYS_sysfs
#define KILL_NR SYS_sysinfo
#define MY_ERRNO 42

static int capget2(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	return syscall(SYS_capget, &h, d);
}

static void install_filter(int nr, uint32_t action)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, action),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog p = { 4, f };
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p) < 0)
		fail("setup seccomp", nr);
}

/* IOPRIO_CLASS_BE << 13 | 5 */
#define IOPRIO_BE5 ((2 << 13) | 5)

static void creds_setup(void)
{
	/* a process-directed SIGTRAP stays pending (blocked) through every restore */
	sigset_t trap;
	sigemptyset(&trap);
	sigaddset(&trap, SIGTRAP);
	sigprocmask(SIG_BLOCK, &trap, NULL);
	kill(getpid(), SIGTRAP);
	gid_t groups[] = { 100, 200, 300 };
	if (setgroups(3, groups) < 0)
		fail("setup setgroups", 0);
	if (setresgid(1000, 1001, 1002) < 0)
		fail("setup setresgid", 0);
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE, 0, 0, 0) < 0)
		fail("setup capbset drop", 0);
	install_filter(ERRNO_NR, SECCOMP_RET_ERRNO | MY_ERRNO);
	install_filter(KILL_NR, SECCOMP_RET_KILL_PROCESS);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fail("setup nnp", 0);
	/* keep the permitted set across the uid change (uid 0 -> non-0 clears it otherwise) */
	if (prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NOROOT, 0, 0, 0) < 0)
		fail("setup securebits", 0);
	if (setresuid(2000, 2001, 2002) < 0)
		fail("setup setresuid", 0);
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = { { KEEP_EFF, KEEP_PRM, KEEP_INH }, { 0, 0, 0 } };
	if (syscall(SYS_capset, &h, d) < 0)
		fail("setup capset", 0);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) < 0)
		fail("setup ambient", 0);
	umask(027);
	if (personality(PER_LINUX | ADDR_NO_RANDOMIZE) < 0)
		fail("setup personality", 0);
	struct rlimit nofile = { 200, 300 }, core = { 0, 0 };
	if (setrlimit(RLIMIT_NOFILE, &nofile) < 0 || setrlimit(RLIMIT_CORE, &core) < 0)
		fail("setup rlimits", 0);
	if (prctl(PR_SET_PDEATHSIG, SIGWINCH, 0, 0, 0) < 0)
		fail("setup pdeathsig", 0);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
		fail("setup subreaper", 0);
	struct sched_param sp = { 0 };
	if (sched_setscheduler(0, SCHED_BATCH, &sp) < 0)
		fail("setup SCHED_BATCH", 0);
	if (setpriority(PRIO_PROCESS, 0, 5) < 0)
		fail("setup nice", 0);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus >= 2) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpus - 1, &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0)
			fail("setup affinity", 0);
	}
	if (syscall(SYS_ioprio_set, 1, 0, IOPRIO_BE5) < 0)
		fail("setup ioprio", 0);
}

static int status_num(const char *key)
{
	char buf[4096];
	int fd = open("/proc/self/status", O_RDONLY);
	if (fd < 0)
		return -1;
	int n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strstr(buf, key);
	return p ? atoi(p + strlen(key)) : -1;
}

static void creds_check(void)
{
	sigset_t pend;
	CHECK(sigpending(&pend) == 0 && sigismember(&pend, SIGTRAP), "pending process-directed SIGTRAP", 0);
	uid_t r, e, s;
	gid_t gr, ge, gs;
	CHECK(getresuid(&r, &e, &s) == 0 && r == 2000 && e == 2001 && s == 2002, "uids", r);
	CHECK(setfsuid(-1) == 2001, "fsuid", setfsuid(-1));
	CHECK(getresgid(&gr, &ge, &gs) == 0 && gr == 1000 && ge == 1001 && gs == 1002, "gids", gr);
	gid_t groups[8];
	int ng = getgroups(8, groups);
	CHECK(ng == 3 && groups[0] == 100 && groups[1] == 200 && groups[2] == 300, "groups", ng);
	struct __user_cap_data_struct d[2];
	CHECK(capget2(d) == 0, "capget", 0);
	CHECK(d[0].effective == KEEP_EFF, "cap_eff", d[0].effective);
	CHECK(d[0].permitted == KEEP_PRM, "cap_prm", d[0].permitted);
	CHECK(d[0].inheritable == KEEP_INH, "cap_inh", d[0].inheritable);
	CHECK(d[1].effective == 0 && d[1].permitted == 0, "cap high words", d[1].permitted);
	CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0) == 1, "ambient", 0);
	CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_KILL, 0, 0) == 0, "ambient extra", 0);
	CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_MODULE, 0, 0, 0) == 0, "bounding set dropped cap", 1);
	CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) == 1, "bounding set kept cap", 0);
	int sb = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	CHECK(sb == (SECBIT_KEEP_CAPS | SECBIT_NOROOT), "securebits", sb);
	CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs", 0);
	CHECK(status_num("Seccomp:\t") == 2, "seccomp mode", status_num("Seccomp:\t"));
	CHECK(status_num("Seccomp_filters:\t") == 2, "seccomp filter count", status_num("Seccomp_filters:\t"));
	errno = 0;
	long rc = syscall(ERRNO_NR, 3);
	CHECK(rc == -1 && errno == MY_ERRNO, "seccomp errno filter", rc);
	mode_t m = umask(0);
	umask(m);
	CHECK(m == 027, "umask", m);
	int pers = personality(0xffffffff);
	CHECK(pers == (PER_LINUX | ADDR_NO_RANDOMIZE), "personality", pers);
	struct rlimit rl;
	CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur == 200 && rl.rlim_max == 300, "RLIMIT_NOFILE", rl.rlim_cur);
	CHECK(getrlimit(RLIMIT_CORE, &rl) == 0 && rl.rlim_cur == 0 && rl.rlim_max == 0, "RLIMIT_CORE", rl.rlim_max);
	int sig = 0;
	CHECK(prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0) == 0 && sig == SIGWINCH, "pdeath signal", sig);
	int sub = 0;
	CHECK(prctl(PR_GET_CHILD_SUBREAPER, &sub, 0, 0, 0) == 0 && sub == 1, "child subreaper", sub);
	CHECK(sched_getscheduler(0) == SCHED_BATCH, "sched policy", sched_getscheduler(0));
	errno = 0;
	CHECK(getpriority(PRIO_PROCESS, 0) == 5, "nice", getpriority(PRIO_PROCESS, 0));
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus >= 2) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CHECK(sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) == 1 && CPU_ISSET(cpus - 1, &set), "CPU affinity", CPU_COUNT(&set));
	}
	long io = syscall(SYS_ioprio_get, 1, 0);
	CHECK(io == IOPRIO_BE5, "I/O priority", io);
	if (access("trigger-kill", F_OK) == 0) {
		say("calling the killed syscall");
		syscall(KILL_NR, 0);
		fail("survived the seccomp kill filter", 0);
	}
}

/* ---------------- timers mode ---------------- */

static volatile sig_atomic_t n_alrm, n_vtalrm, n_prof, n_ptimer, n_ttimer, n_usr1;
static volatile pid_t ttimer_tid_seen;
static pid_t helper_tid;
static timer_t ptimer, ttimer;
static char altstack_main[65536], altstack_helper[65536];

static void on_alrm(int s) { (void)s; n_alrm++; }
static void on_vtalrm(int s) { (void)s; n_vtalrm++; }
static void on_prof(int s) { (void)s; n_prof++; }
static void on_usr1(int s) { (void)s; n_usr1++; }
static volatile sig_atomic_t n_trap;
static void on_trap(int s) { (void)s; n_trap++; }
static void on_rt(int s, siginfo_t *si, void *uc)
{
	(void)s; (void)uc;
	if (si->si_value.sival_int == 1234)
		n_ptimer++;
	else if (si->si_value.sival_int == 5678) {
		n_ttimer++;
		ttimer_tid_seen = gettid();
	}
}

static struct rseq *my_rseq(void)
{
	return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

static void check_rseq_registered(const char *who)
{
	struct rseq *rs = my_rseq();
	CHECK(__rseq_size > 0, "glibc did not register rseq", __rseq_size);
	/* a signal delivery makes the kernel refresh cpu_id of a registered area */
	rs->cpu_id = 9999;
	raise(SIGUSR1);
	if (rs->cpu_id >= 9999)
		fail(who, rs->cpu_id);
}

static void check_altstack(char *base, const char *what)
{
	stack_t ss;
	CHECK(sigaltstack(NULL, &ss) == 0, "sigaltstack", 0);
	CHECK(ss.ss_sp == base && ss.ss_size == sizeof(altstack_main) && ss.ss_flags == 0, what, (long)ss.ss_sp);
}

static void set_altstack(char *base)
{
	stack_t ss = { .ss_sp = base, .ss_size = sizeof(altstack_main), .ss_flags = 0 };
	if (sigaltstack(&ss, NULL) < 0)
		fail("setup sigaltstack", 0);
}

static volatile int helper_fail;
static void *helper(void *arg)
{
	(void)arg;
	helper_tid = gettid();
	set_altstack(altstack_helper);
	/* a SIGTRAP of its own stays pending (blocked) through every restore */
	sigset_t trap;
	sigemptyset(&trap);
	sigaddset(&trap, SIGTRAP);
	pthread_sigmask(SIG_BLOCK, &trap, NULL);
	raise(SIGTRAP);
	for (;;) {
		sigset_t pend;
		if (sigpending(&pend) < 0 || !sigismember(&pend, SIGTRAP))
			helper_fail = 3;
		stack_t ss;
		if (sigaltstack(NULL, &ss) < 0 || ss.ss_sp != altstack_helper)
			helper_fail = 1;
		struct rseq *rs = my_rseq();
		rs->cpu_id = 9999;
		raise(SIGUSR1);
		if (rs->cpu_id >= 9999)
			helper_fail = 2;
		sleep_ms(20);
	}
	return NULL;
}

/* An rseq critical section long enough that a freeze almost always lands in it. */
extern char rs_start[], rs_post[], rs_abort[];
static struct rseq_cs rs_desc __attribute__((aligned(32)));
static volatile uint64_t rs_commits, rs_aborts;

static void *rseq_spinner(void *arg)
{
	(void)arg;
	struct rseq *rs = my_rseq();
	for (;;) {
		__asm__ __volatile__(
			"lea %[desc], %%rax\n\t"
			"mov %%rax, %[cs]\n\t"
			".globl rs_start\n"
			"rs_start:\n\t"
			"mov $20000000, %%rcx\n"
			"1:\n\t"
			"dec %%rcx\n\t"
			"jnz 1b\n\t"
			"incq %[commits]\n\t"
			".globl rs_post\n"
			"rs_post:\n\t"
			"jmp 2f\n\t"
			".long 0x53053053\n"
			".globl rs_abort\n"
			"rs_abort:\n\t"
			"incq %[aborts]\n"
			"2:\n\t"
			"movq $0, %[cs]\n\t"
			: [cs] "=m"(rs->rseq_cs), [commits] "+m"(rs_commits), [aborts] "+m"(rs_aborts)
			: [desc] "m"(rs_desc)
			: "rax", "rcx", "memory", "cc");
	}
	return NULL;
}

static void timers_setup(void)
{
	struct sigaction sa = { 0 };
	sa.sa_flags = SA_RESTART | SA_ONSTACK;
	sa.sa_handler = on_alrm;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = on_vtalrm;
	sigaction(SIGVTALRM, &sa, NULL);
	sa.sa_handler = on_prof;
	sigaction(SIGPROF, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	/* a restore whose injected syscalls trap (int3) must give this back */
	sa.sa_handler = on_trap;
	sigaction(SIGTRAP, &sa, NULL);
	sa.sa_flags = SA_RESTART | SA_SIGINFO | SA_ONSTACK;
	sa.sa_sigaction = on_rt;
	sigaction(SIGRTMIN + 2, &sa, NULL);
	set_altstack(altstack_main);

	rs_desc.version = 0;
	rs_desc.flags = 0;
	rs_desc.start_ip = (uint64_t)rs_start;
	rs_desc.post_commit_offset = (uint64_t)(rs_post - rs_start);
	rs_desc.abort_ip = (uint64_t)rs_abort;
	FILE *f = fopen("rseq-cs", "w");
	fprintf(f, "%lx %lx %lx\n", (unsigned long)rs_start, (unsigned long)rs_post, (unsigned long)rs_abort);
	fclose(f);

	pthread_t t;
	pthread_create(&t, NULL, helper, NULL);
	pthread_create(&t, NULL, rseq_spinner, NULL);
	while (!helper_tid)
		sleep_ms(1);

	struct itimerval real = { { 0, 40000 }, { 0, 40000 } };
	struct itimerval virt = { { 0, 30000 }, { 0, 30000 } };
	struct itimerval prof = { { 0, 60000 }, { 0, 60000 } };
	setitimer(ITIMER_REAL, &real, NULL);
	setitimer(ITIMER_VIRTUAL, &virt, NULL);
	setitimer(ITIMER_PROF, &prof, NULL);

	struct sigevent ev = { 0 };
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = SIGRTMIN + 2;
	ev.sigev_value.sival_int = 1234;
	if (timer_create(CLOCK_MONOTONIC, &ev, &ptimer) < 0)
		fail("setup timer_create", 0);
	ev.sigev_notify = SIGEV_THREAD_ID;
	ev.sigev_value.sival_int = 5678;
	ev._sigev_un._tid = helper_tid;
	if (timer_create(CLOCK_MONOTONIC, &ev, &ttimer) < 0)
		fail("setup timer_create thread", 0);
	struct itimerspec its = { { 0, 25000000 }, { 0, 25000000 } };
	timer_settime(ptimer, 0, &its, NULL);
	its.it_interval.tv_nsec = its.it_value.tv_nsec = 35000000;
	timer_settime(ttimer, 0, &its, NULL);
	FILE *tf = fopen("timer-ids", "w");
	fprintf(tf, "%ld %ld\n", (long)ptimer, (long)ttimer);
	fclose(tf);
}

static void timers_check(void)
{
	static int last_alrm, last_vt, last_prof, last_pt, last_tt, checks;
	struct itimerval v;
	getitimer(ITIMER_REAL, &v);
	CHECK(v.it_interval.tv_usec == 40000 && v.it_interval.tv_sec == 0, "ITIMER_REAL interval", v.it_interval.tv_usec);
	getitimer(ITIMER_VIRTUAL, &v);
	CHECK(v.it_interval.tv_usec == 30000, "ITIMER_VIRTUAL interval", v.it_interval.tv_usec);
	getitimer(ITIMER_PROF, &v);
	CHECK(v.it_interval.tv_usec == 60000, "ITIMER_PROF interval", v.it_interval.tv_usec);
	struct itimerspec its;
	CHECK(timer_gettime(ptimer, &its) == 0 && its.it_interval.tv_nsec == 25000000, "POSIX timer", its.it_interval.tv_nsec);
	CHECK(timer_gettime(ttimer, &its) == 0 && its.it_interval.tv_nsec == 35000000, "POSIX thread timer", its.it_interval.tv_nsec);
	CHECK(helper_fail == 0, "helper thread state (1 altstack, 2 rseq, 3 pending SIGTRAP)", helper_fail);
	if (ttimer_tid_seen)
		CHECK(ttimer_tid_seen == helper_tid, "SIGEV_THREAD_ID timer hit another thread", ttimer_tid_seen);
	struct sigaction cur;
	sigaction(SIGTRAP, NULL, &cur);
	CHECK(cur.sa_handler == on_trap, "SIGTRAP handler", (long)cur.sa_handler);
	if (cur.sa_handler == on_trap) {
		int before = n_trap;
		raise(SIGTRAP);
		CHECK(n_trap == before + 1, "SIGTRAP not handled", n_trap);
	}
	check_altstack(altstack_main, "main sigaltstack");
	check_rseq_registered("main thread rseq not registered");
	/* every few ticks, each timer must have fired */
	if (++checks % 5 == 0) {
		CHECK(n_alrm > last_alrm, "ITIMER_REAL stopped firing", n_alrm);
		CHECK(n_vtalrm > last_vt, "ITIMER_VIRTUAL stopped firing", n_vtalrm);
		CHECK(n_prof > last_prof, "ITIMER_PROF stopped firing", n_prof);
		CHECK(n_ptimer > last_pt, "POSIX timer stopped firing", n_ptimer);
		CHECK(n_ttimer > last_tt, "POSIX thread timer stopped firing", n_ttimer);
		last_alrm = n_alrm, last_vt = n_vtalrm, last_prof = n_prof, last_pt = n_ptimer, last_tt = n_ttimer;
	}
}

int main(int argc, char **argv)
{
	int creds = argc > 1 && strcmp(argv[1], "creds") == 0;
	log_fd = open("progress.log", O_WRONLY | O_CREAT | O_APPEND, 0666);
	if (log_fd < 0)
		return 2;
	if (creds)
		creds_setup();
	else
		timers_setup();
	touch("ready");
	for (tick = 1;; tick++) {
		if (creds)
			creds_check();
		else
			timers_check();
		say("tick %lu ok", tick);
		/* burn some CPU so the virtual/prof timers advance, then sleep */
		struct timespec t0, t1;
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
		do
			clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
		while ((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) < 20000000L);
		sleep_ms(80);
	}
}
