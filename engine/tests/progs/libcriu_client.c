/* A real RPC client: Debian's libcriu (the library crun uses) driving
 * `criu swrk` through criu_set_service_binary.
 * usage: libcriu_client CRIU IMAGES_DIR dump PID | restore | version
 * Prints `version N`, each notification as `notify ACTION PID`, then
 * `dump RET` or `restore RET` (RET: the restored pid, or < 0). */
#include <criu/criu.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int notify(char *action, criu_notify_arg_t na)
{
	printf("notify %s %d\n", action, criu_notify_pid(na));
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	if (criu_init_opts() < 0 || criu_set_service_binary(argv[1]) < 0)
		return 3;
	printf("version %d\n", criu_get_version());
	fflush(stdout);
	if (!strcmp(argv[3], "version"))
		return 0;
	int dfd = open(argv[2], O_DIRECTORY);
	if (dfd < 0)
		return 4;
	criu_set_images_dir_fd(dfd);
	criu_set_log_level(4);
	criu_set_notify_cb(notify);
	if (!strcmp(argv[3], "dump") && argc > 4) {
		criu_set_log_file("dump.log");
		criu_set_pid(atoi(argv[4]));
		printf("dump %d\n", criu_dump());
	} else if (!strcmp(argv[3], "restore")) {
		criu_set_log_file("restore.log");
		int pid = criu_restore_child();
		printf("restore %d\n", pid);
		fflush(stdout);
		/* the restored tree is our child: let it run, the test kills it */
		if (pid > 0)
			pause();
	} else {
		return 5;
	}
	return 0;
}
