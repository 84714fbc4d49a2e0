/* A listener on the wildcard address reached over the loopback, as a local
 * client that is not under the shim reaches it (under the shim, with
 * loopback on the kernel, through the isolator's kernel loopback listener):
 * a connection reset before accept is still accepted, reset; a listener
 * shut down refuses accept until it listens again; with a backlog of 0 a
 * second client stays connecting, and closing the listener resets the
 * queued connection and refuses the connecting one. */
#include "common.h"

/* The loopback address at listener s's port (which a listen after a
 * shutdown may have changed: the port of a socket bound to port 0 is
 * released when it is shut down). */
static socklen_t target(int s, union addr *to)
{
	union addr a;
	socklen_t l = sizeof a;

	getsockname(s, &a.sa, &l);
	return mkaddr(to, AF_INET, "127.0.0.1", ntohs(a.in.sin_port));
}

static int listener(int backlog, union addr *to, socklen_t *tl)
{
	union addr a;
	socklen_t l = mkaddr(&a, AF_INET, NULL, 0);
	int s = sock(AF_INET, SOCK_STREAM);

	res("bind wildcard", bind(s, &a.sa, l));
	res("listen", listen(s, backlog));
	*tl = target(s, to);
	return s;
}

static int client(const union addr *to, socklen_t tl, int nonblock)
{
	int c = sock(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0));
	int rc = connect(c, &to->sa, tl);

	if (rc < 0 && errno == EINPROGRESS)
		say("connect: EINPROGRESS");
	else
		res("connect", rc);
	return c;
}

/* Waits up to ms for fd's events and prints them with its pending error. */
static void hangup(const char *what, int fd, int ms)
{
	struct pollfd p = { fd, 0, 0 };
	int n = poll(&p, 1, ms), err = 0;
	socklen_t el = sizeof err;
	char c;

	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
	say("%s: poll %d hup=%d err=%d SO_ERROR=%s", what, n, !!(p.revents & POLLHUP),
	    !!(p.revents & POLLERR), err ? en(err) : "0");
	if (!err)
		res("read", read(fd, &c, 1));
}

int main(int argc, char **argv)
{
	union addr to;
	socklen_t tl;
	struct linger lg = { 1, 0 };
	struct pollfd p;
	int l, c, c2, a;

	init(argc, argv);

	say("reset before accept");
	l = listener(8, &to, &tl);
	c = client(&to, tl, 0);
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	close(c);
	a = accept(l, NULL, NULL);
	say("accept: %s", a < 0 ? en(errno) : "ok");
	if (a >= 0) {
		hangup("accepted", a, 5000);
		close(a);
	}
	close(l);

	say("shutdown, listen again");
	l = listener(8, &to, &tl);
	res("shutdown SHUT_RD", shutdown(l, SHUT_RD));
	res("accept after shutdown", accept(l, NULL, NULL));
	res("listen again", listen(l, 8));
	tl = target(l, &to);
	c = client(&to, tl, 0);
	p = (struct pollfd){ l, POLLIN, 0 };
	say("listener readable: %d", poll(&p, 1, 5000));
	a = accept(l, NULL, NULL);
	say("accept after listen again: %s", a < 0 ? en(errno) : "ok");
	close(a);
	close(c);
	close(l);

	say("backlog 0, close");
	l = listener(0, &to, &tl);
	c = client(&to, tl, 1);
	p = (struct pollfd){ c, POLLOUT, 0 };
	say("first connected: %d", poll(&p, 1, 5000));
	p = (struct pollfd){ l, POLLIN, 0 };
	say("listener readable: %d", poll(&p, 1, 5000));
	c2 = client(&to, tl, 1);
	p = (struct pollfd){ c2, POLLOUT, 0 };
	say("second connected within 300 ms: %d", poll(&p, 1, 300));
	close(l);
	hangup("first", c, 5000);
	hangup("second", c2, 5000);
	close(c);
	close(c2);
	return 0;
}
