/*
 * udpecho: the UDP echo server of the benchmark's round-trip row. It sends
 * every datagram back to its sender, unchanged, until killed. It is C so
 * that it runs on the kernel, under libmpshim.so and inside runsc alike.
 *
 *	udpecho PORT
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: udpecho PORT\n");
		return 2;
	}
	char *end;
	long port = strtol(argv[1], &end, 10);
	if (*end != '\0' || port < 1 || port > 65535) {
		fprintf(stderr, "udpecho: bad port %s\n", argv[1]);
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("udpecho: socket");
		return 1;
	}
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		perror("udpecho: bind");
		return 1;
	}
	printf("udpecho: ready on %ld\n", port);
	fflush(stdout);
	static char buf[65536];
	for (;;) {
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("udpecho: recvfrom");
			return 1;
		}
		if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl) < 0 && errno != EINTR)
			perror("udpecho: sendto");
	}
}
