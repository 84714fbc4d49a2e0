/* Readiness of a non-blocking connect through select, poll and epoll (the
 * epoll registration made before connect, as nginx does), then bulk data
 * through the connection. */
#include "common.h"

static int start(union addr *a, socklen_t *l)
{
	int s = sock(AF_INET, SOCK_STREAM | SOCK_NONBLOCK), rc;

	*l = mkaddr(a, AF_INET, V4, PORT_ECHO);
	rc = connect(s, &a->sa, *l);
	say("connect: %s", rc == 0 ? "0" : en(errno));
	return s;
}

int main(int argc, char **argv)
{
	union addr a;
	socklen_t l;
	int s, ep;

	init(argc, argv);
	s = start(&a, &l);
	fd_set w;
	FD_ZERO(&w);
	FD_SET(s, &w);
	struct timeval tv = { 5, 0 };
	int n = select(s + 1, NULL, &w, NULL, &tv);
	say("select: %d writable=%d", n, FD_ISSET(s, &w));
	say("SO_ERROR: %s", en(sockerr(s)));
	close(s);

	s = start(&a, &l);
	struct pollfd p = { s, POLLOUT, 0 };
	n = poll(&p, 1, 5000);
	say("poll: %d out=%d", n, !!(p.revents & POLLOUT));
	say("SO_ERROR: %s", en(sockerr(s)));
	close(s);

	s = sock(AF_INET, SOCK_STREAM | SOCK_NONBLOCK);
	ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u64 = 42 }, out;
	res("epoll_ctl before connect", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
	l = mkaddr(&a, AF_INET, V4, PORT_ECHO);
	int rc = connect(s, &a.sa, l);
	say("connect: %s", rc == 0 ? "0" : en(errno));
	n = epoll_wait(ep, &out, 1, 5000);
	say("epoll: %d out=%d data=%llu", n, !!(out.events & EPOLLOUT), (unsigned long long)out.data.u64);
	say("SO_ERROR: %s", en(sockerr(s)));

	/* 256 KiB through the echo peer. */
	static char big[262144], back[262144];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (char)(i * 7 + 3);
	size_t sent = 0, got = 0;
	for (int iter = 0; iter < 100000 && got < sizeof big; iter++) {
		if (sent < sizeof big) {
			ssize_t w = write(s, big + sent, sizeof big - sent);
			if (w > 0)
				sent += (size_t)w;
		}
		ssize_t r = read(s, back + got, sizeof back - got);
		if (r > 0)
			got += (size_t)r;
		else if (r == 0)
			break;
		else {
			struct pollfd q = { s, POLLIN | (sent < sizeof big ? POLLOUT : 0), 0 };
			poll(&q, 1, 1000);
		}
	}
	say("bulk: sent=%zu got=%zu equal=%d", sent, got, !memcmp(big, back, sizeof big));
	close(ep);
	close(s);
	return 0;
}
