/* Holds a pseudo-terminal slave open (as a shell job would its terminal). */
#include "fx.h"

int main(void)
{
	fx_open_log();
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	FX_CHECK(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0, "openpt");
	int s = open(ptsname(m), O_RDWR | O_NOCTTY);
	FX_CHECK(s >= 0, "open pts");
	close(m);
	int rfd = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(rfd);
	for (fx_tick = 1;; fx_tick++) {
		/* the terminal may be hung up after a restore (its shell is gone): only the fd must be there */
		FX_CHECK(fcntl(s, F_GETFD) >= 0, "tty fd open");
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(100);
	}
}
