/* IPv4 multicast over the loopback: a receiver bound to the wildcard joins
 * a group on lo (by address and by interface index), a sender sends through
 * lo (IP_MULTICAST_IF by address or index, or bound to 127.0.0.1); two
 * receivers sharing the port both get the datagram; once a membership is
 * dropped nothing more arrives. */
#include "common.h"

static const char *group = "224.0.2.1";

/* Waits up to ms for a datagram and prints what arrived. */
static void expect(const char *what, int s, int ms)
{
	struct pollfd p = { s, POLLIN, 0 };
	char buf[32];
	ssize_t n;

	poll(&p, 1, ms);
	n = recv(s, buf, sizeof buf - 1, MSG_DONTWAIT);
	if (n < 0) {
		say("%s: -1 %s", what, en(errno));
		return;
	}
	buf[n] = 0;
	say("%s: %zd %s", what, n, buf);
}

/* A UDP socket bound to the wildcard (port 0: a fresh one, or port with
 * SO_REUSEADDR); returns it and its port in *port. */
static int receiver(int *port)
{
	union addr a;
	socklen_t l = mkaddr(&a, AF_INET, NULL, *port);
	int s = sock(AF_INET, SOCK_DGRAM), one = 1;

	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(s, &a.sa, l) < 0) {
		say("bind wildcard: -1 %s", en(errno));
		exit(1);
	}
	l = sizeof a;
	getsockname(s, &a.sa, &l);
	*port = ntohs(a.in.sin_port);
	return s;
}

static long join(int s, int opt, int by_index)
{
	if (by_index) {
		struct ip_mreqn m = { .imr_ifindex = 1 };
		inet_pton(AF_INET, group, &m.imr_multiaddr);
		return setsockopt(s, IPPROTO_IP, opt, &m, sizeof m);
	}
	struct ip_mreq m;
	inet_pton(AF_INET, group, &m.imr_multiaddr);
	m.imr_interface.s_addr = htonl(INADDR_LOOPBACK);
	return setsockopt(s, IPPROTO_IP, opt, &m, sizeof m);
}

static long send_group(int s, int port, const char *msg)
{
	union addr a;
	socklen_t l = mkaddr(&a, AF_INET, group, port);

	return sendto(s, msg, strlen(msg), 0, &a.sa, l);
}

int main(int argc, char **argv)
{
	init(argc, argv);
	for (int by_index = 0; by_index < 2; by_index++) {
		const char *by = by_index ? "index" : "address";
		int port = 0, r = receiver(&port), s = sock(AF_INET, SOCK_DGRAM);

		say("membership and interface by %s", by);
		res("IP_ADD_MEMBERSHIP", join(r, IP_ADD_MEMBERSHIP, by_index));
		if (by_index) {
			struct ip_mreqn m = { .imr_ifindex = 1 };
			res("IP_MULTICAST_IF", setsockopt(s, IPPROTO_IP, IP_MULTICAST_IF, &m, sizeof m));
		} else {
			struct in_addr lo = { htonl(INADDR_LOOPBACK) };
			res("IP_MULTICAST_IF", setsockopt(s, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo));
		}
		res("sendto group", send_group(s, port, "one"));
		expect("received", r, 3000);
		res("IP_DROP_MEMBERSHIP", join(r, IP_DROP_MEMBERSHIP, by_index));
		res("sendto group", send_group(s, port, "two"));
		expect("received after drop", r, 300);
		close(r);
		close(s);
	}

	/* Two receivers on one port, a sender bound to the loopback. */
	int port = 0, r1 = receiver(&port), r2 = receiver(&port), s = sock(AF_INET, SOCK_DGRAM);
	union addr lo;
	socklen_t l = mkaddr(&lo, AF_INET, "127.0.0.1", 0);

	say("two receivers, sender bound to the loopback");
	res("IP_ADD_MEMBERSHIP 1", join(r1, IP_ADD_MEMBERSHIP, 0));
	res("IP_ADD_MEMBERSHIP 2", join(r2, IP_ADD_MEMBERSHIP, 1));
	res("bind 127.0.0.1", bind(s, &lo.sa, l));
	res("sendto group", send_group(s, port, "both"));
	expect("receiver 1", r1, 3000);
	expect("receiver 2", r2, 3000);
	return 0;
}
