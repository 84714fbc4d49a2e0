/* Blocking and non-blocking connect to a closed port: ECONNREFUSED, the
 * non-blocking one through poll and SO_ERROR. */
#include "common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	for (int fam = AF_INET; fam; fam = fam == AF_INET ? AF_INET6 : 0) {
		union addr a;
		socklen_t l = mkaddr(&a, fam, peer_ip(fam), PORT_CLOSED);
		int s = sock(fam, SOCK_STREAM), rc;

		say("family %s", fam == AF_INET ? "inet" : "inet6");
		res("blocking connect", connect(s, &a.sa, l));
		say("SO_ERROR after: %s", en(sockerr(s)));
		close(s);

		s = sock(fam, SOCK_STREAM | SOCK_NONBLOCK);
		rc = connect(s, &a.sa, l);
		/* Refused at once or later: both are the kernel's. */
		if (rc < 0 && errno == EINPROGRESS) {
			struct pollfd p = { s, POLLOUT, 0 };
			rc = poll(&p, 1, 5000);
			say("poll: %d, writable or error: %s", rc,
			    p.revents & (POLLOUT | POLLERR | POLLHUP) ? "yes" : "no");
			say("SO_ERROR: %s", en(sockerr(s)));
			say("SO_ERROR again: %s", en(sockerr(s)));
		} else {
			say("non-blocking connect: %d %s (immediate)", rc, en(errno));
		}
		close(s);
	}
	return 0;
}
