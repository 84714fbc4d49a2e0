/* A listener on the wildcard address: accept4 flags, the peer's address,
 * the accepted socket's names, accept's errors. The peer connects back on
 * request (PORT_BACK). */
#include "common.h"

static int listener(int fam, int *port)
{
	union addr a;
	socklen_t l = mkaddr(&a, fam, NULL, 0);
	int s = sock(fam, SOCK_STREAM), one = 1;

	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	res("bind wildcard", bind(s, &a.sa, l));
	res("listen", listen(s, 8));
	l = sizeof a;
	getsockname(s, &a.sa, &l);
	*port = ntohs(fam == AF_INET ? a.in.sin_port : a.in6.sin6_port);
	return s;
}

static void ask_back(int fam, int port)
{
	int c = dial(fam, PORT_BACK);
	unsigned char p[2] = { (unsigned char)(port >> 8), (unsigned char)port };

	if (write(c, p, 2) != 2)
		say("ask_back: write failed");
	close(c);
}

int main(int argc, char **argv)
{
	init(argc, argv);
	for (int fam = AF_INET; fam; fam = fam == AF_INET ? AF_INET6 : 0) {
		int port, l, a, fl, v = -1;
		union addr pa, la;
		socklen_t pl = sizeof pa, ll = sizeof la, vl = sizeof v;
		char b[80], buf[4] = { 0 };
		struct pollfd p;

		say("family %s", fam == AF_INET ? "inet" : "inet6");
		l = listener(fam, &port);
		say("listener port nonzero: %d", port != 0);
		res("listen again (backlog update)", listen(l, 511));
		res("get SO_ACCEPTCONN", getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl));
		say("SO_ACCEPTCONN: %d", v);
		set_nonblock(l, 1);
		res("accept with nothing pending", accept(l, NULL, NULL));
		res("accept4 bad flags", accept4(l, NULL, NULL, 0x4000));
		ask_back(fam, port);
		p = (struct pollfd){ l, POLLIN, 0 };
		say("listener readable: %d", poll(&p, 1, 5000));
		a = accept4(l, &pa.sa, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (a < 0) {
			say("accept4: -1 %s", en(errno));
			return 1;
		}
		fl = fcntl(a, F_GETFL);
		say("accepted: nonblock=%d cloexec=%d peer=%s", !!(fl & O_NONBLOCK),
		    !!(fcntl(a, F_GETFD) & FD_CLOEXEC), fmt(&pa, pl, b, sizeof b));
		getsockname(a, &la.sa, &ll);
		say("accepted local port is the listener's: %d",
		    ntohs(fam == AF_INET ? la.in.sin_port : la.in6.sin6_port) == port);
		say("read: %zu %.2s", read_full(a, buf, 2), buf);
		close(a);
		int c = sock(fam, SOCK_STREAM);
		res("accept on a non-listening socket", accept(c, NULL, NULL));
		close(c);
		close(l);
	}
	return 0;
}
