/* early.c: a library whose constructor uses sockets before libmpshim.so's
 * constructor may have run (shim_test.go preloads it in both orders). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

__attribute__((constructor)) static void early(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(80) };
	int s = socket(AF_INET, SOCK_STREAM, 0), rc;

	inet_pton(AF_INET, "10.255.255.1", &a.sin_addr);
	rc = connect(s, (struct sockaddr *)&a, sizeof a);
	printf("early: connect=%d %s\n", rc, rc < 0 ? strerrorname_np(errno) : "OK");
	fflush(stdout);
	close(s);
}
