/* The dump's batch of injected queries stops itself with a signal the
 * process neither catches, blocks nor has pending (SIGURG, SIGWINCH or
 * SIGCHLD, whose default is to ignore them). argv[1] is the mode:
 *   plain:  nothing set up (the batch takes SIGURG);
 *   caught: a SIGURG handler, SIGWINCH blocked (the batch takes SIGCHLD);
 *   none:   SIGURG and SIGWINCH handlers, SIGCHLD blocked and pending
 *           (no signal fits: every query is stepped on its own).
 * Every 50 ms the program appends `tick N ok` to ./progress.log, or
 * `FAIL ...` when one of its handlers ran or its pending set is not what
 * it set up (in "none", exactly SIGCHLD). ./ready once set up. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;

static void on_sig(int sig)
{
	handled = sig;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "plain";
	int none = !strcmp(mode, "none");
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sig;
	sigset_t block;
	sigemptyset(&block);
	if (!strcmp(mode, "caught")) {
		sigaction(SIGURG, &sa, NULL);
		sigaddset(&block, SIGWINCH);
	} else if (none) {
		sigaction(SIGURG, &sa, NULL);
		sigaction(SIGWINCH, &sa, NULL);
		sigaddset(&block, SIGCHLD);
	}
	sigprocmask(SIG_BLOCK, &block, NULL);
	if (none)
		raise(SIGCHLD);
	FILE *ready = fopen("ready", "w");
	if (ready)
		fclose(ready);
	for (unsigned long n = 1;; n++) {
		struct timespec ts = {0, 50 * 1000 * 1000};
		nanosleep(&ts, NULL);
		sigset_t pend;
		sigpending(&pend);
		/* (compared signal by signal: sigpending and sigemptyset touch
		 * only the kernel's 64 bits of the 1024-bit sigset_t) */
		unsigned long long bits = 0, want = none ? 1ULL << (SIGCHLD - 1) : 0;
		for (int s = 1; s <= 64; s++)
			if (sigismember(&pend, s) == 1)
				bits |= 1ULL << (s - 1);
		FILE *log = fopen("progress.log", "a");
		if (!log)
			continue;
		if (handled)
			fprintf(log, "FAIL: handler of signal %d ran\n", (int)handled);
		else if (bits != want)
			fprintf(log, "FAIL: pending signals changed to %#llx (SIGURG %d SIGWINCH %d SIGCHLD %d)\n", bits, sigismember(&pend, SIGURG),
				sigismember(&pend, SIGWINCH), sigismember(&pend, SIGCHLD));
		else
			fprintf(log, "tick %lu ok\n", n);
		fclose(log);
	}
}
