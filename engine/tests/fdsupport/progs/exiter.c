/* Ticks until ./stop exists, then exits with status 3. */
#include "fx.h"

int main(void)
{
	fx_open_log();
	int rfd = open("ready", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(rfd);
	for (fx_tick = 1;; fx_tick++) {
		if (access("stop", F_OK) == 0)
			_exit(3);
		fx_say("tick %lu ok", fx_tick);
		fx_sleep_ms(50);
	}
}
