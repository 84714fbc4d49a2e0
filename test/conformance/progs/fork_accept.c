/* A listener shared with a fork child: the child accepts, the parent
 * triggers the connection. */
#include "common.h"

int main(int argc, char **argv)
{
	union addr a;
	socklen_t l;
	int s, port, st = 0;
	pid_t pid;

	init(argc, argv);
	l = mkaddr(&a, AF_INET, NULL, 0);
	s = sock(AF_INET, SOCK_STREAM);
	res("bind", bind(s, &a.sa, l));
	res("listen", listen(s, 8));
	l = sizeof a;
	getsockname(s, &a.sa, &l);
	port = ntohs(a.in.sin_port);
	pid = fork();
	if (pid == 0) {
		char buf[4] = { 0 };
		int c = accept(s, NULL, NULL);
		say("child accept: %s", c >= 0 ? "ok" : en(errno));
		say("child read: %zu %.2s", read_full(c, buf, 2), buf);
		union addr pa;
		socklen_t pl = sizeof pa;
		char b[80];
		getpeername(c, &pa.sa, &pl);
		say("child peer: %s", fmt(&pa, pl, b, sizeof b));
		_exit(0);
	}
	int c = dial(AF_INET, PORT_BACK);
	unsigned char p[2] = { (unsigned char)(port >> 8), (unsigned char)port };
	if (write(c, p, 2) != 2)
		say("write failed");
	close(c);
	say("child exit: %d", waitpid(pid, &st, 0) == pid && WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	/* The parent's listener still works after the child is gone. */
	set_nonblock(s, 1);
	res("parent accept, nothing pending", accept(s, NULL, NULL));
	close(s);
	return 0;
}
