/* Get/set of common options, before and after connect: SO_REUSEADDR,
 * SO_REUSEPORT, TCP_NODELAY, TCP_CORK, SO_KEEPALIVE, SO_LINGER,
 * SO_RCVBUF/SO_SNDBUF (the kernel doubles), SO_TYPE, SO_ERROR,
 * SO_ACCEPTCONN, unknown options. */
#include "common.h"

static void geti(int s, int lvl, int name, const char *what)
{
	int v = -1;
	socklen_t l = sizeof v;

	if (getsockopt(s, lvl, name, &v, &l) < 0)
		say("get %s: -1 %s", what, en(errno));
	else
		say("get %s: %d (len %u)", what, v, l);
}

static void seti(int s, int lvl, int name, int v, const char *what)
{
	char w[64];

	snprintf(w, sizeof w, "set %s=%d", what, v);
	res(w, setsockopt(s, lvl, name, &v, sizeof v));
}

/* TCP_CORK's own checks: a value shorter than an int is refused, a
 * shorter buffer gets the value's first bytes. */
static void cork_edges(int s)
{
	int v = 1;
	unsigned char c[2] = { 0xee, 0xee };
	socklen_t l = 1;

	res("set TCP_CORK len 2", setsockopt(s, IPPROTO_TCP, TCP_CORK, &v, 2));
	seti(s, IPPROTO_TCP, TCP_CORK, 7, "TCP_CORK");
	res("get TCP_CORK len 1", getsockopt(s, IPPROTO_TCP, TCP_CORK, c, &l));
	say("TCP_CORK len 1: %#x %#x (len %u)", c[0], c[1], l);
	seti(s, IPPROTO_TCP, TCP_CORK, 0, "TCP_CORK");
}

static void all(int s)
{
	struct linger lg = { 1, 5 };
	socklen_t l = sizeof lg;

	geti(s, SOL_SOCKET, SO_TYPE, "SO_TYPE");
	geti(s, SOL_SOCKET, SO_ERROR, "SO_ERROR");
	seti(s, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
	geti(s, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR");
	seti(s, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
	geti(s, SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT");
	geti(s, IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY");
	seti(s, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
	geti(s, IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY");
	seti(s, IPPROTO_TCP, TCP_CORK, 1, "TCP_CORK");
	geti(s, IPPROTO_TCP, TCP_CORK, "TCP_CORK");
	seti(s, IPPROTO_TCP, TCP_CORK, 0, "TCP_CORK");
	cork_edges(s);
	geti(s, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE");
	seti(s, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
	geti(s, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE");
	seti(s, IPPROTO_TCP, TCP_KEEPIDLE, 30, "TCP_KEEPIDLE");
	geti(s, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE");
	res("set SO_LINGER {1,5}", setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
	memset(&lg, 0, sizeof lg);
	res("get SO_LINGER", getsockopt(s, SOL_SOCKET, SO_LINGER, &lg, &l));
	say("SO_LINGER: onoff=%d linger=%d len=%u", lg.l_onoff, lg.l_linger, l);
	seti(s, SOL_SOCKET, SO_RCVBUF, 65536, "SO_RCVBUF");
	geti(s, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF");
	seti(s, SOL_SOCKET, SO_SNDBUF, 65536, "SO_SNDBUF");
	geti(s, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF");
	geti(s, SOL_SOCKET, SO_ACCEPTCONN, "SO_ACCEPTCONN");
	geti(s, SOL_SOCKET, 9999, "unknown SOL_SOCKET option");
	geti(s, IPPROTO_TCP, 9999, "unknown TCP option");
}

int main(int argc, char **argv)
{
	union addr a;
	socklen_t l;
	int s;

	init(argc, argv);
	say("-- fresh socket");
	s = sock(AF_INET, SOCK_STREAM);
	all(s);
	seti(s, IPPROTO_TCP, TCP_CORK, 1, "TCP_CORK");
	say("-- connected (options set before connect carry over)");
	l = mkaddr(&a, AF_INET, V4, PORT_ECHO);
	res("connect", connect(s, &a.sa, l));
	geti(s, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR");
	geti(s, IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY");
	geti(s, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE");
	geti(s, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF");
	geti(s, IPPROTO_TCP, TCP_CORK, "TCP_CORK");
	all(s);
	close(s);
	return 0;
}
