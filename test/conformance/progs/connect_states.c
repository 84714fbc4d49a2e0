/* EINPROGRESS, then EALREADY (or EISCONN once established), EISCONN after
 * completion, SO_ERROR 0, and a blocking connect on a connected socket. */
#include "common.h"

int main(int argc, char **argv)
{
	union addr a;
	socklen_t l;
	int s, rc, e;
	struct pollfd p;

	init(argc, argv);
	l = mkaddr(&a, AF_INET, V4, PORT_ECHO);
	s = sock(AF_INET, SOCK_STREAM | SOCK_NONBLOCK);
	rc = connect(s, &a.sa, l);
	say("first connect: %s", rc == 0 ? "0" : en(errno));
	rc = connect(s, &a.sa, l);
	e = errno;
	/* EALREADY while the handshake runs, 0 once right after it, EISCONN
	 * later: which one depends on timing. */
	say("second connect: %s", (rc == 0 || e == EALREADY || e == EISCONN) ? "0-EALREADY-or-EISCONN" : en(e));
	p = (struct pollfd){ s, POLLOUT, 0 };
	rc = poll(&p, 1, 5000);
	say("poll: %d revents-out: %d", rc, !!(p.revents & POLLOUT));
	say("SO_ERROR: %s", en(sockerr(s)));
	rc = connect(s, &a.sa, l);
	/* Linux reports a completed connect once to the first connect after
	 * it (0); the second connect above may have been that one. */
	if (rc == 0 && e == EALREADY)
		rc = connect(s, &a.sa, l);
	res("connect after completion", rc);
	set_nonblock(s, 0);
	res("blocking connect on connected", connect(s, &a.sa, l));
	res("write", write(s, "ok", 2));
	char buf[4] = { 0 };
	say("echo: %zu %.2s", read_full(s, buf, 2), buf);
	close(s);
	return 0;
}
