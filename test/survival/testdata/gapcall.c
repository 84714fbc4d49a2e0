/*
 * gapcall: socket calls made while the isolator daemon dies, run under
 * libmpshim.so.
 *
 *   gapcall connect ADDR PORT
 *     makes one blocking TCP connect to ADDR:PORT (an address nobody
 *     answers for: the call waits in the INS), printing "waiting" first;
 *     when connect returns it prints "returned rc=R errno=NAME". Then it
 *     makes three more connects at once and prints for each
 *     "again rc=R errno=NAME ms=M" (M: how long the call took).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int try_connect(const struct sockaddr_in *sa)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), rc, e;

	if (fd < 0)
		return -errno;
	rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
	e = errno;
	close(fd);
	return rc < 0 ? -e : 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int rc;

	if (argc != 4 || strcmp(argv[1], "connect") != 0 || inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
		fprintf(stderr, "usage: gapcall connect ADDR PORT\n");
		return 2;
	}
	sa.sin_port = htons((unsigned short)atoi(argv[3]));
	setvbuf(stdout, NULL, _IONBF, 0);
	printf("waiting\n");
	rc = try_connect(&sa);
	printf("returned rc=%d errno=%s\n", rc < 0 ? -1 : 0, rc < 0 ? strerrorname_np(-rc) : "0");
	for (int i = 0; i < 3; i++) {
		long t = now_ms();
		rc = try_connect(&sa);
		printf("again rc=%d errno=%s ms=%ld\n", rc < 0 ? -1 : 0, rc < 0 ? strerrorname_np(-rc) : "0",
		       now_ms() - t);
	}
	return 0;
}
