/* memfds as fds and as mappings, checked every tick:
 * - "mfd-data": 40000 bytes (pattern 31), fd at offset 1234, a second fd
 *   of the same inode opened separately (read-only, offset 7), a
 *   MAP_SHARED mapping of its first 3 pages (the tick number written into
 *   page 2 through it must show through both fds) and a MAP_PRIVATE
 *   mapping of all of it whose page 1 was written privately (pattern 33;
 *   the file keeps pattern 31 there);
 * - "mfd-sealed": 5000 bytes (pattern 32), sealed against write, shrink,
 *   grow and further seals (the seals are checked, and that a write and a
 *   truncate are refused);
 * - "mfd-maponly": 8192 bytes, MAP_SHARED, its fd closed (only the
 *   mapping keeps it);
 * - "mfd-exec": a copy of this program; when ./exec-now exists the program
 *   runs it with execveat(fd, "", AT_EMPTY_PATH) (argument "exit42": the
 *   copy exits 42 at once), writes "exec ok" or FAIL to the log and removes
 *   ./exec-now.
 * The names /proc shows for the fds and mappings are checked too. With
 * "selfexec" it first runs itself again from a memfd copy (fexecve); with
 * "futureseal" it only holds a writable MAP_SHARED mapping of a memfd
 * sealed F_SEAL_FUTURE_WRITE after it was mapped; with "hugetlb", only a
 * memfd made with MFD_HUGETLB. */
#include "fx.h"
#include <sys/syscall.h>

#define DATA_SIZE 40000
#define SEALED_SIZE 5000
#define MAPONLY_SIZE 8192
#define PG 4096

static int mfd(const char *name, unsigned flags)
{
	return (int)syscall(SYS_memfd_create, name, flags);
}

static void check_link(int fd, const char *want, const char *what)
{
	char path[64], got[256];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, got, sizeof(got) - 1);
	FX_CHECK(n > 0, what);
	got[n] = 0;
	FX_CHECK(strcmp(got, want) == 0, what);
}

/* Whether /proc/self/maps names `name` at `addr`. */
static int mapped_as(void *addr, const char *name)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int ok = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo;
		if (sscanf(line, "%lx-", &lo) == 1 && lo == (unsigned long)addr) {
			ok = strstr(line, name) != NULL;
			break;
		}
	}
	fclose(f);
	return ok;
}

int main(int argc, char **argv, char **envp)
{
	if (argc > 1 && !strcmp(argv[1], "exit42"))
		_exit(42);
	if (argc > 1 && !strcmp(argv[1], "selfexec")) {
		/* run again from a memfd copy of this program (fexecve) */
		int m = mfd("self", MFD_CLOEXEC);
		int e = open("/proc/self/exe", O_RDONLY);
		static uint8_t b[1 << 16];
		ssize_t n;
		if (m < 0 || e < 0)
			_exit(5);
		while ((n = read(e, b, sizeof(b))) > 0)
			if (write(m, b, n) != n)
				_exit(6);
		char *args[] = { argv[0], "fromfd", NULL };
		syscall(SYS_execveat, m, "", args, envp, AT_EMPTY_PATH);
		_exit(7);
	}
	fx_open_log();
	if (argc > 1 && !strcmp(argv[1], "hugetlb")) {
		/* only a hugetlb memfd (no pages: none need to be reserved) */
		int m = mfd("huge", MFD_HUGETLB);
		FX_CHECK(m >= 0, "memfd hugetlb");
		fx_ready();
		for (fx_tick = 1;; fx_tick++) {
			fx_say("tick %lu ok", fx_tick);
			fx_sleep_ms(100);
		}
	}
	if (argc > 1 && !strcmp(argv[1], "futureseal")) {
		/* a writable shared mapping, then F_SEAL_FUTURE_WRITE */
		int m = mfd("future", MFD_ALLOW_SEALING);
		FX_CHECK(m >= 0 && ftruncate(m, PG) == 0, "memfd future");
		uint8_t *w = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
		FX_CHECK(w != MAP_FAILED, "mmap future");
		FX_CHECK(fcntl(m, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == 0, "seal future write");
		fx_ready();
		for (fx_tick = 1;; fx_tick++) {
			memcpy(w, &fx_tick, sizeof(fx_tick));
			fx_say("tick %lu ok", fx_tick);
			fx_sleep_ms(100);
		}
	}
	static uint8_t buf[DATA_SIZE];

	int data = mfd("mfd-data", MFD_ALLOW_SEALING);
	FX_CHECK(data >= 0, "memfd_create data");
	fx_fill(buf, DATA_SIZE, 31);
	FX_CHECK(write(data, buf, DATA_SIZE) == DATA_SIZE, "write data");
	FX_CHECK(lseek(data, 1234, SEEK_SET) == 1234, "seek data");
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", data);
	int data2 = open(self, O_RDONLY);
	FX_CHECK(data2 >= 0 && lseek(data2, 7, SEEK_SET) == 7, "reopen data");
	uint8_t *sh = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, data, 0);
	FX_CHECK(sh != MAP_FAILED, "mmap shared");
	uint8_t *pv = mmap(NULL, DATA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, data, 0);
	FX_CHECK(pv != MAP_FAILED, "mmap private");
	fx_fill(pv + PG, PG, 33);

	int sealed = mfd("mfd-sealed", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	FX_CHECK(sealed >= 0, "memfd_create sealed");
	fx_fill(buf, SEALED_SIZE, 32);
	FX_CHECK(write(sealed, buf, SEALED_SIZE) == SEALED_SIZE, "write sealed");
	const int seals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
	FX_CHECK(fcntl(sealed, F_ADD_SEALS, seals) == 0, "add seals");

	int mo = mfd("mfd-maponly", 0);
	FX_CHECK(mo >= 0 && ftruncate(mo, MAPONLY_SIZE) == 0, "memfd maponly");
	uint8_t *mp = mmap(NULL, MAPONLY_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mo, 0);
	FX_CHECK(mp != MAP_FAILED, "mmap maponly");
	fx_fill(mp, MAPONLY_SIZE, 34);
	close(mo);

	int ex = mfd("mfd-exec", MFD_CLOEXEC);
	int self_exe = open("/proc/self/exe", O_RDONLY);
	FX_CHECK(ex >= 0 && self_exe >= 0, "memfd exec");
	for (;;) {
		ssize_t n = read(self_exe, buf, sizeof(buf));
		FX_CHECK(n >= 0, "read exe");
		if (n == 0)
			break;
		FX_CHECK(write(ex, buf, n) == n, "copy exe");
	}
	close(self_exe);
	fx_ready();

	for (fx_tick = 1;; fx_tick++) {
		struct stat st, st2;
		check_link(data, "/memfd:mfd-data (deleted)", "data fd name");
		check_link(data2, "/memfd:mfd-data (deleted)", "data2 fd name");
		check_link(sealed, "/memfd:mfd-sealed (deleted)", "sealed fd name");
		check_link(ex, "/memfd:mfd-exec (deleted)", "exec fd name");
		FX_CHECK(mapped_as(sh, "/memfd:mfd-data (deleted)"), "shared mapping name");
		FX_CHECK(mapped_as(pv, "/memfd:mfd-data (deleted)"), "private mapping name");
		FX_CHECK(mapped_as(mp, "/memfd:mfd-maponly (deleted)"), "maponly mapping name");
		FX_CHECK(fstat(data, &st) == 0 && fstat(data2, &st2) == 0 && st.st_ino == st2.st_ino, "one data inode");
		FX_CHECK(st.st_size == DATA_SIZE && st.st_nlink == 0, "data stat");
		FX_CHECK(lseek(data, 0, SEEK_CUR) == 1234 && lseek(data2, 0, SEEK_CUR) == 7, "data offsets");
		FX_CHECK((fcntl(data, F_GETFL) & O_ACCMODE) == O_RDWR && (fcntl(data2, F_GETFL) & O_ACCMODE) == O_RDONLY, "data flags");
		FX_CHECK(fcntl(data, F_GET_SEALS) == 0, "data seals");
		FX_CHECK(!(fcntl(data, F_GETFD) & FD_CLOEXEC) && (fcntl(sealed, F_GETFD) & FD_CLOEXEC), "cloexec");
		/* the file: pattern 31 but the tick word in page 2 */
		memcpy(sh + 2 * PG, &fx_tick, sizeof(fx_tick));
		FX_CHECK(pread(data2, buf, DATA_SIZE, 0) == DATA_SIZE, "read data");
		unsigned long seen;
		memcpy(&seen, buf + 2 * PG, sizeof(seen));
		FX_CHECK(seen == fx_tick, "shared mapping writes the file");
		fx_fill(buf + 2 * PG, sizeof(seen), 0);
		memcpy(buf + 2 * PG, &seen, sizeof(seen));
		{
			uint8_t want[DATA_SIZE];
			fx_fill(want, DATA_SIZE, 31);
			memcpy(want + 2 * PG, &seen, sizeof(seen));
			FX_CHECK(memcmp(buf, want, DATA_SIZE) == 0, "data content");
			FX_CHECK(memcmp(sh, want, 3 * PG) == 0, "shared mapping content");
			FX_CHECK(memcmp(pv, want, PG) == 0, "private mapping page 0");
			FX_CHECK(fx_same(pv + PG, PG, 33), "private mapping page 1 (written privately)");
			FX_CHECK(memcmp(pv + 3 * PG, want + 3 * PG, DATA_SIZE - 3 * PG) == 0, "private mapping tail");
		}
		FX_CHECK(fstat(sealed, &st) == 0 && st.st_size == SEALED_SIZE, "sealed size");
		FX_CHECK(fcntl(sealed, F_GET_SEALS) == seals, "sealed seals");
		FX_CHECK(pread(sealed, buf, SEALED_SIZE, 0) == SEALED_SIZE && fx_same(buf, SEALED_SIZE, 32), "sealed content");
		FX_CHECK(pwrite(sealed, "x", 1, 0) < 0 && errno == EPERM, "sealed refuses a write");
		FX_CHECK(ftruncate(sealed, 100) < 0 && errno == EPERM, "sealed refuses a truncate");
		{
			uint8_t want[MAPONLY_SIZE];
			fx_fill(want, MAPONLY_SIZE, 34);
			FX_CHECK(memcmp(mp + 8, want + 8, MAPONLY_SIZE - 8) == 0, "maponly content");
			if (fx_tick > 1) {
				unsigned long prev;
				memcpy(&prev, mp, sizeof(prev));
				FX_CHECK(prev == fx_tick - 1, "maponly counter");
			}
			memcpy(mp, &fx_tick, sizeof(fx_tick));
		}
		if (access("exec-now", F_OK) == 0) {
			pid_t c = fork();
			if (c == 0) {
				char *args[] = { "memfd-exec", "exit42", NULL };
				syscall(SYS_execveat, ex, "", args, envp, AT_EMPTY_PATH);
				_exit(99);
			}
			int status = 0;
			FX_CHECK(c > 0 && waitpid(c, &status, 0) == c, "exec child");
			FX_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 42, "execveat of the memfd");
			fx_say("exec ok");
			unlink("exec-now");
		}
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
