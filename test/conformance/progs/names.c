/* getsockname/getpeername for v4 and v6, before and after connect, with a
 * short buffer (truncation, full length reported). Also IPV6_V6ONLY. */
#include "common.h"

/* Prints both names of s; connected: s is connected (its local address is
 * a specific address of the stack that serves it). */
static void names(int s, const char *when, int connected)
{
	union addr a;
	socklen_t l = sizeof a;
	char b[80];

	if (getsockname(s, &a.sa, &l) < 0)
		say("%s getsockname: -1 %s", when, en(errno));
	else
		say("%s getsockname: %s len=%u", when,
		    connected ? fmt_local(&a, l, b, sizeof b) : fmt(&a, l, b, sizeof b), l);
	l = sizeof a;
	if (getpeername(s, &a.sa, &l) < 0)
		say("%s getpeername: -1 %s", when, en(errno));
	else
		say("%s getpeername: %s len=%u", when, fmt(&a, l, b, sizeof b), l);
}

int main(int argc, char **argv)
{
	init(argc, argv);
	for (int fam = AF_INET; fam; fam = fam == AF_INET ? AF_INET6 : 0) {
		int s = sock(fam, SOCK_STREAM), v = -1;
		socklen_t l;
		union addr a;

		say("family %s", fam == AF_INET ? "inet" : "inet6");
		names(s, "fresh", 0);
		if (fam == AF_INET6) {
			l = sizeof v;
			res("get IPV6_V6ONLY", getsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v, &l));
			say("IPV6_V6ONLY default: %d", v);
		}
		l = mkaddr(&a, fam, peer_ip(fam), PORT_ECHO);
		res("connect", connect(s, &a.sa, l));
		names(s, "connected", 1);
		/* A buffer too short for the address: truncated, full length. */
		memset(&a, 0xee, sizeof a);
		l = 4;
		res("getpeername short", getpeername(s, &a.sa, &l));
		say("short: len=%u family=%d", l, a.sa.sa_family);
		close(s);
	}
	int s = sock(AF_INET6, SOCK_STREAM), v = 1;
	socklen_t l = sizeof v;
	res("set IPV6_V6ONLY", setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof v));
	v = -1;
	getsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v, &l);
	say("IPV6_V6ONLY now: %d", v);
	/* A v4-mapped destination on a v6-only socket. */
	{
		union addr m;
		char mapped[64];
		snprintf(mapped, sizeof mapped, "::ffff:%s", V4);
		l = mkaddr(&m, AF_INET6, mapped, PORT_ECHO);
		res("connect v4-mapped on V6ONLY", connect(s, &m.sa, l));
	}
	close(s);
	return 0;
}
