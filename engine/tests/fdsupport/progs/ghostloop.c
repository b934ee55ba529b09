/* An unlinked file still open (ghost), for dump/restore in rounds: its
 * name as /proc shows it, its contents and its offset must stay the same
 * round after round. With argument "sparse", a second ghost: 8 MiB
 * apparent size, 8 KiB of data at 4 MiB, holes elsewhere (kept as holes).
 * With "taken", a new file is created under the ghost's old name (not kept
 * open) and must stay there, unchanged. With "big", a second ghost of
 * 3 MiB of data (over the default 1 MiB --ghost-limit). With "linked", a
 * file opened as linked.bin and unlinked from that name while it keeps
 * another, other.bin (--link-remap): the fd must stay that very file (one
 * inode with other.bin; a write through the fd shows there). */
#include "fx.h"

#define SPARSE_SIZE (8 << 20)
#define SPARSE_AT (4 << 20)
#define BIG_SIZE (3 << 20)

int main(int argc, char **argv)
{
	fx_open_log();
	uint8_t buf[8192];
	int g = open("kept.bin", O_RDWR | O_CREAT | O_TRUNC, 0640);
	FX_CHECK(g >= 0, "open kept");
	fx_fill(buf, 3000, 21);
	FX_CHECK(write(g, buf, 3000) == 3000, "write kept");
	FX_CHECK(lseek(g, 1000, SEEK_SET) == 1000, "seek kept");
	FX_CHECK(unlink("kept.bin") == 0, "unlink kept");
	int sparse = argc > 1 && !strcmp(argv[1], "sparse");
	int taken = argc > 1 && !strcmp(argv[1], "taken");
	if (taken) {
		int t = open("kept.bin", O_WRONLY | O_CREAT | O_EXCL, 0644);
		FX_CHECK(t >= 0 && write(t, "new file", 8) == 8, "create the new kept.bin");
		close(t);
	}
	int big = argc > 1 && !strcmp(argv[1], "big");
	static uint8_t bigbuf[BIG_SIZE];
	int b = -1;
	if (big) {
		b = open("big.bin", O_RDWR | O_CREAT | O_TRUNC, 0600);
		fx_fill(bigbuf, BIG_SIZE, 23);
		FX_CHECK(b >= 0 && write(b, bigbuf, BIG_SIZE) == BIG_SIZE, "write big");
		FX_CHECK(fsync(b) == 0 && unlink("big.bin") == 0, "unlink big");
	}
	int linked = argc > 1 && !strcmp(argv[1], "linked");
	int l = -1;
	char lwant[4096] = "";
	if (linked) {
		l = open("linked.bin", O_RDWR | O_CREAT | O_TRUNC, 0640);
		FX_CHECK(l >= 0 && write(l, "linked contents", 15) == 15, "write linked");
		FX_CHECK(link("linked.bin", "other.bin") == 0 && unlink("linked.bin") == 0, "relink linked");
		FX_CHECK(lseek(l, 3, SEEK_SET) == 3, "seek linked");
		char lp[64];
		snprintf(lp, sizeof(lp), "/proc/self/fd/%d", l);
		ssize_t ln = readlink(lp, lwant, sizeof(lwant) - 1);
		FX_CHECK(ln > 0, "readlink linked");
		lwant[ln] = 0;
	}
	int s = -1;
	if (sparse) {
		s = open("sparse.bin", O_RDWR | O_CREAT | O_TRUNC, 0600);
		FX_CHECK(s >= 0 && ftruncate(s, SPARSE_SIZE) == 0, "sparse");
		fx_fill(buf, 8192, 22);
		FX_CHECK(pwrite(s, buf, 8192, SPARSE_AT) == 8192, "write sparse");
		FX_CHECK(unlink("sparse.bin") == 0, "unlink sparse");
	}
	char want[4096], got[4096];
	snprintf(want, sizeof(want), "/proc/self/fd/%d", g);
	ssize_t n = readlink(want, got, sizeof(got) - 1);
	FX_CHECK(n > 0, "readlink");
	got[n] = 0;
	strcpy(want, got);
	int rfd = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(rfd);

	for (fx_tick = 1;; fx_tick++) {
		struct stat st;
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", g);
		n = readlink(path, got, sizeof(got) - 1);
		FX_CHECK(n > 0, "readlink");
		got[n] = 0;
		FX_CHECK(strcmp(got, want) == 0, "ghost name unchanged");
		FX_CHECK(fstat(g, &st) == 0 && st.st_size == 3000 && st.st_nlink == 0, "kept stat");
		FX_CHECK(lseek(g, 0, SEEK_CUR) == 1000, "kept offset");
		FX_CHECK(pread(g, buf, 3000, 0) == 3000 && fx_same(buf, 3000, 21), "kept content");
		if (taken) {
			int t = open("kept.bin", O_RDONLY);
			char nb[16] = { 0 };
			FX_CHECK(t >= 0 && read(t, nb, sizeof(nb)) == 8 && !memcmp(nb, "new file", 8), "the new kept.bin");
			FX_CHECK(fstat(t, &st) == 0 && st.st_nlink == 1 && st.st_mode == (S_IFREG | 0644), "the new kept.bin stat");
			close(t);
		}
		if (linked) {
			struct stat os;
			char lp[64], lgot[4096];
			snprintf(lp, sizeof(lp), "/proc/self/fd/%d", l);
			ssize_t ln = readlink(lp, lgot, sizeof(lgot) - 1);
			FX_CHECK(ln > 0, "readlink linked");
			lgot[ln] = 0;
			FX_CHECK(strcmp(lgot, lwant) == 0, "linked fd name unchanged");
			FX_CHECK(fstat(l, &st) == 0 && stat("other.bin", &os) == 0 && st.st_ino == os.st_ino && st.st_nlink == 1, "linked fd is other.bin");
			FX_CHECK(access("linked.bin", F_OK) != 0, "linked.bin stays unlinked");
			FX_CHECK(lseek(l, 0, SEEK_CUR) == 3, "linked offset");
			char tb[16];
			snprintf(tb, sizeof(tb), "%06lu", fx_tick % 1000000);
			FX_CHECK(pwrite(l, tb, 6, 15) == 6, "write linked");
			int o = open("other.bin", O_RDONLY);
			char ob[32] = { 0 };
			FX_CHECK(o >= 0 && pread(o, ob, 21, 0) == 21 && !memcmp(ob, "linked contents", 15) && !memcmp(ob + 15, tb, 6), "linked write shows in other.bin");
			close(o);
		}
		if (big) {
			FX_CHECK(fstat(b, &st) == 0 && st.st_size == BIG_SIZE && st.st_nlink == 0, "big stat");
			FX_CHECK(lseek(b, 0, SEEK_CUR) == BIG_SIZE, "big offset");
			memset(bigbuf, 0, BIG_SIZE);
			FX_CHECK(pread(b, bigbuf, BIG_SIZE, 0) == BIG_SIZE && fx_same(bigbuf, BIG_SIZE, 23), "big content");
		}
		if (sparse) {
			FX_CHECK(fstat(s, &st) == 0 && st.st_size == SPARSE_SIZE && st.st_nlink == 0, "sparse stat");
			FX_CHECK(st.st_blocks * 512 < (1 << 20), "sparse holes kept");
			FX_CHECK(pread(s, buf, 8192, SPARSE_AT) == 8192 && fx_same(buf, 8192, 22), "sparse content");
			FX_CHECK(pread(s, buf, 16, SPARSE_AT - 16) == 16 && buf[0] == 0 && buf[15] == 0, "sparse hole");
		}
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
