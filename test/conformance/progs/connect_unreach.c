/* Connect to an address with no route: ENETUNREACH, blocking and not. */
#include "common.h"

int main(int argc, char **argv)
{
	union addr a;
	socklen_t l;
	int s;

	init(argc, argv);
	l = mkaddr(&a, AF_INET, UNROUTABLE, 80);
	s = sock(AF_INET, SOCK_STREAM);
	res("blocking connect", connect(s, &a.sa, l));
	close(s);
	s = sock(AF_INET, SOCK_STREAM | SOCK_NONBLOCK);
	res("non-blocking connect", connect(s, &a.sa, l));
	close(s);
	s = sock(AF_INET, SOCK_DGRAM);
	res("udp sendto", sendto(s, "x", 1, 0, &a.sa, l));
	close(s);
	return 0;
}
