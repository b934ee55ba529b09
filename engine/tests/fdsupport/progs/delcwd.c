/* The working directory is removed while the program sits in it. */
#include "fx.h"

int main(void)
{
	fx_open_log();
	FX_CHECK(mkdir("gone", 0750) == 0 || errno == EEXIST, "mkdir");
	FX_CHECK(chdir("gone") == 0, "chdir");
	FX_CHECK(rmdir("../gone") == 0, "rmdir");
	int rfd = open("../ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(rfd);
	for (fx_tick = 1;; fx_tick++) {
		struct stat st;
		FX_CHECK(stat(".", &st) == 0 && S_ISDIR(st.st_mode) && st.st_nlink == 0, "cwd deleted");
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
