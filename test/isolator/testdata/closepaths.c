/* closepaths: opens n TCP connections to host:port (an echo server) and
 * finishes each (shutdown of the write side, read to EOF, then the hang-up
 * that follows once both sides have closed), so the INS has closed its end
 * and only the app's close can end its record of the socket. It then closes
 * them all one way, prints "closed n" and waits for its stdin to close, so
 * the process stays while its INS's records are counted.
 *
 *   closepaths close|dup2|dup3|close_range|closefrom n host port
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "closepaths: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int finished(const char *host, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
	char buf[64];
	struct pollfd p;
	int fd;
	ssize_t n;

	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "closepaths: bad address %s\n", host);
		exit(2);
	}
	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
		die("socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		die("connect");
	if (write(fd, "x", 1) != 1)
		die("write");
	if (shutdown(fd, SHUT_WR) < 0)
		die("shutdown");
	while ((n = read(fd, buf, sizeof buf)) > 0)
		;
	if (n < 0)
		die("read");
	p = (struct pollfd){ .fd = fd };
	if (poll(&p, 1, 10000) != 1 || !(p.revents & POLLHUP)) {
		fprintf(stderr, "closepaths: no hang-up on the finished socket (revents %#x)\n", p.revents);
		exit(1);
	}
	return fd;
}

int main(int argc, char **argv)
{
	int n, fds[256], devnull;
	char c;

	if (argc != 5 || (n = atoi(argv[2])) < 1 || n > 256) {
		fprintf(stderr, "usage: closepaths close|dup2|dup3|close_range|closefrom n host port\n");
		return 2;
	}
	if ((devnull = open("/dev/null", O_RDONLY)) < 0)
		die("open /dev/null");
	for (int i = 0; i < n; i++)
		fds[i] = finished(argv[3], atoi(argv[4]));
	if (!strcmp(argv[1], "close")) {
		for (int i = 0; i < n; i++)
			if (close(fds[i]) < 0)
				die("close");
	} else if (!strcmp(argv[1], "dup2")) {
		for (int i = 0; i < n; i++)
			if (dup2(devnull, fds[i]) < 0)
				die("dup2");
	} else if (!strcmp(argv[1], "dup3")) {
		for (int i = 0; i < n; i++)
			if (dup3(devnull, fds[i], O_CLOEXEC) < 0)
				die("dup3");
	} else if (!strcmp(argv[1], "close_range")) {
		/* One call per run of consecutive descriptors (a descriptor
		 * inherited from the parent may sit between two sockets). */
		for (int i = 0, j; i < n; i = j) {
			for (j = i + 1; j < n && fds[j] == fds[j - 1] + 1; j++)
				;
			if (close_range((unsigned int)fds[i], (unsigned int)fds[j - 1], 0) < 0)
				die("close_range");
		}
	} else if (!strcmp(argv[1], "closefrom")) {
		/* Everything from the first socket up goes, inherited
		 * descriptors above it included; the shim keeps its own. */
		closefrom(fds[0]);
	} else {
		fprintf(stderr, "closepaths: unknown way %s\n", argv[1]);
		return 2;
	}
	printf("closed %d\n", n);
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
