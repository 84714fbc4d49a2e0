/* Writing to a connection the peer has closed: EPIPE and SIGPIPE (and no
 * SIGPIPE with MSG_NOSIGNAL). */
#include "common.h"

static volatile sig_atomic_t pipes;

static void on_pipe(int sig)
{
	(void)sig;
	pipes++;
}

int main(int argc, char **argv)
{
	char buf[4096] = { 0 };
	int s, e = 0;

	init(argc, argv);
	signal(SIGPIPE, on_pipe);
	s = dial(AF_INET, PORT_CLOSE);
	say("read: %zu (EOF)", read_full(s, buf, 1));
	for (int i = 0; i < 1000; i++) {
		if (write(s, buf, sizeof buf) < 0) {
			e = errno;
			break;
		}
		usleep(1000);
	}
	say("write error: %s, SIGPIPE seen: %s", en(e), pipes ? "yes" : "no");
	pipes = 0;
	res("send MSG_NOSIGNAL", send(s, buf, 1, MSG_NOSIGNAL));
	say("SIGPIPE with MSG_NOSIGNAL: %s", pipes ? "yes" : "no");
	close(s);
	return 0;
}
