/* dup2/dup3/F_DUPFD_CLOEXEC of a connected socket, and dup2 of a fresh
 * socket onto it. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[8] = { 0 }, b[80];
	union addr a;
	socklen_t l = sizeof a;
	int s, t;

	init(argc, argv);
	s = dial(AF_INET, PORT_ECHO);
	say("dup2: %d", dup2(s, 100));
	close(s);
	res("write via copy", write(100, "dup", 3));
	say("read via copy: %zu %.3s", read_full(100, buf, 3), buf);
	getpeername(100, &a.sa, &l);
	say("peer via copy: %s", fmt(&a, l, b, sizeof b));
	say("dup3: %d", dup3(100, 101, O_CLOEXEC));
	say("dup3 cloexec: %d", !!(fcntl(101, F_GETFD) & FD_CLOEXEC));
	t = fcntl(101, F_DUPFD_CLOEXEC, 110);
	say("F_DUPFD_CLOEXEC: %d cloexec=%d", t, !!(fcntl(t, F_GETFD) & FD_CLOEXEC));
	close(100);
	close(101);
	memset(buf, 0, sizeof buf);
	res("write via last copy", write(t, "abc", 3));
	say("read via last copy: %zu %.3s", read_full(t, buf, 3), buf);
	s = sock(AF_INET, SOCK_STREAM);
	say("dup2 fresh onto connected: %d", dup2(s, t));
	l = sizeof a;
	res("getpeername of fresh copy", getpeername(t, &a.sa, &l));
	close(s);
	close(t);
	return 0;
}
