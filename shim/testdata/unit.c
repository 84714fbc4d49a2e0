/*
 * unit.c: checks of libmpshim.so that need no isolator. Run as
 *   LD_PRELOAD=libmpshim.so unit CASE
 * inside a network namespace with only loopback up (shim_test.go does
 * that), with MPSHIM_SOCKET naming a path where nothing listens. Every
 * check prints "ok: ..." or "FAIL: ..."; the exit status is the number of
 * failures.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static int failures;

#define CHECK(cond, ...)                                      \
	do {                                                  \
		if (cond) {                                   \
			printf("ok: ");                       \
		} else {                                      \
			printf("FAIL: ");                     \
			failures++;                           \
		}                                             \
		printf(__VA_ARGS__);                          \
		printf("\n");                                 \
	} while (0)

/* Expect rc == -1 with errno e. */
#define EXPECT_ERR(rc, e, what)                                                         \
	do {                                                                            \
		int rc_ = (rc), er_ = errno;                                            \
		CHECK(rc_ == -1 && er_ == (e), "%s: rc=%d errno=%s (want %s)", what, rc_, \
		      strerrorname_np(er_) ? strerrorname_np(er_) : "?", strerrorname_np(e)); \
	} while (0)

static struct sockaddr_in v4(const char *ip, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	inet_pton(AF_INET, ip, &a.sin_addr);
	return a;
}

/* 10.255.255.1 is never reached: the namespace has no route but loopback
 * and the shim answers before the kernel when it works. */
#define FAR "10.255.255.1"

static void case_native(void)
{
	int sv[2], v = 0, rc;
	char buf[16];
	socklen_t l = sizeof v;
	struct sockaddr_un sun = { .sun_family = AF_UNIX, .sun_path = "/nonexistent/sock" };
	struct iovec iov = { buf, sizeof buf };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	errno = 4242;
	rc = (int)send(sv[0], "hello", 5, 0);
	CHECK(rc == 5 && errno == 4242, "send on AF_UNIX keeps errno (rc=%d errno=%d)", rc, errno);
	/* Lengths the compiler cannot see, so that _FORTIFY_SOURCE builds
	 * call __recv_chk and __recvfrom_chk. */
	volatile size_t vlen = sizeof buf, two = 2;
	rc = (int)recv(sv[1], buf, vlen, MSG_PEEK);
	CHECK(rc == 5 && errno == 4242, "recv MSG_PEEK (rc=%d)", rc);
	rc = (int)recvfrom(sv[1], buf, two, 0, NULL, NULL);
	CHECK(rc == 2 && !memcmp(buf, "he", 2), "recvfrom");
	rc = (int)recvmsg(sv[1], &mh, 0);
	CHECK(rc == 3 && !memcmp(buf, "llo", 3), "recvmsg");
	rc = ioctl(sv[1], FIONREAD, &v);
	CHECK(rc == 0 && v == 0 && errno == 4242, "FIONREAD on AF_UNIX");
	rc = getsockopt(sv[0], SOL_SOCKET, SO_TYPE, &v, &l);
	CHECK(rc == 0 && v == SOCK_STREAM && errno == 4242, "getsockopt SO_TYPE on AF_UNIX");
	EXPECT_ERR((int)recv(sv[1], buf, sizeof buf, MSG_DONTWAIT), EAGAIN, "recv MSG_DONTWAIT");
	EXPECT_ERR(close(-1), EBADF, "close(-1)");
	EXPECT_ERR(fcntl(-1, F_GETFL), EBADF, "fcntl(-1)");
	EXPECT_ERR(dup2(-1, 5), EBADF, "dup2(-1)");
	EXPECT_ERR(getsockopt(123456, SOL_SOCKET, SO_TYPE, &v, &l), EBADF, "getsockopt on bad fd");
	int u = socket(AF_UNIX, SOCK_STREAM, 0);
	EXPECT_ERR(connect(u, (struct sockaddr *)&sun, sizeof sun), ENOENT, "AF_UNIX connect");
	struct sockaddr_in far = v4(FAR, 80);
	EXPECT_ERR(connect(u, (struct sockaddr *)&far, sizeof far), EINVAL,
		   "AF_UNIX socket with an AF_INET address stays native");
	int fd = dup(u);
	rc = fcntl(fd, F_DUPFD_CLOEXEC, 40);
	CHECK(rc >= 40 && (fcntl(rc, F_GETFD) & FD_CLOEXEC), "fcntl F_DUPFD_CLOEXEC");
	close(rc);
	close(fd);
	close(u);
	int nl = socket(AF_NETLINK, SOCK_RAW, 0);
	CHECK(nl >= 0, "AF_NETLINK socket");
	close(nl);
	close(sv[0]);
	close(sv[1]);
}

static void loopback_pair(int family)
{
	int l, c, a, rc, v;
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
		struct sockaddr_storage ss;
	} addr, got;
	socklen_t len = sizeof addr, glen = sizeof got;
	char buf[8];

	memset(&addr, 0, sizeof addr);
	if (family == AF_INET) {
		addr.in = v4("127.0.0.1", 0);
		len = sizeof addr.in;
	} else {
		addr.in6.sin6_family = AF_INET6;
		addr.in6.sin6_addr = in6addr_loopback;
		len = sizeof addr.in6;
	}
	l = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	v = 1;
	CHECK(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v) == 0, "setsockopt on pending");
	CHECK(bind(l, &addr.sa, len) == 0, "bind loopback (family %d)", family);
	CHECK(listen(l, 4) == 0, "listen loopback");
	CHECK(getsockname(l, &addr.sa, &len) == 0 && addr.sa.sa_family == family,
	      "getsockname loopback listener");
	c = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	rc = connect(c, &addr.sa, len);
	CHECK(rc == 0 || errno == EINPROGRESS, "connect loopback stays on the kernel (rc=%d %s)", rc,
	      strerrorname_np(errno));
	a = accept4(l, &got.sa, &glen, SOCK_CLOEXEC);
	CHECK(a >= 0 && got.sa.sa_family == family && (fcntl(a, F_GETFD) & FD_CLOEXEC),
	      "accept4 on a kernel listener");
	CHECK(write(a, "ping", 4) == 4, "write");
	usleep(10000);
	CHECK(recv(c, buf, sizeof buf, 0) == 4 && !memcmp(buf, "ping", 4), "recv");
	glen = sizeof got;
	CHECK(getpeername(c, &got.sa, &glen) == 0 && got.sa.sa_family == family, "getpeername");
	close(a);
	close(c);
	close(l);
}

static void case_loopback(void)
{
	loopback_pair(AF_INET);
	loopback_pair(AF_INET6);
	int u = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = v4("127.0.0.1", 9);
	CHECK(sendto(u, "x", 1, 0, (struct sockaddr *)&a, sizeof a) == 1, "UDP sendto loopback");
	close(u);
}

static void case_loopback_ins(void)
{
	int c = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = v4("127.0.0.1", 9);
	EXPECT_ERR(connect(c, (struct sockaddr *)&a, sizeof a), ENETUNREACH,
		   "MPSHIM_LOOPBACK=ins sends loopback to the (absent) isolator");
	close(c);
}

static void case_fail_closed(void)
{
	struct sockaddr_in far = v4(FAR, 80), any = v4("0.0.0.0", 0);
	int s = socket(AF_INET, SOCK_STREAM, 0), v = 0;
	socklen_t l = sizeof v;

	errno = 0;
	EXPECT_ERR(connect(s, (struct sockaddr *)&far, sizeof far), ENETUNREACH, "connect far");
	EXPECT_ERR(connect(s, (struct sockaddr *)&far, sizeof far), ENETUNREACH, "connect far again");
	CHECK(getsockopt(s, SOL_SOCKET, SO_TYPE, &v, &l) == 0 && v == SOCK_STREAM,
	      "the socket is still the kernel's");
	close(s);
	s = socket(AF_INET, SOCK_STREAM, 0);
	EXPECT_ERR(bind(s, (struct sockaddr *)&any, sizeof any), ENETUNREACH, "bind wildcard");
	EXPECT_ERR(listen(s, 1), ENETUNREACH, "listen unbound");
	close(s);
	s = socket(AF_INET6, SOCK_DGRAM, 0);
	struct sockaddr_in6 far6 = { .sin6_family = AF_INET6, .sin6_port = htons(53) };
	inet_pton(AF_INET6, "2001:db8::1", &far6.sin6_addr);
	EXPECT_ERR((int)sendto(s, "x", 1, 0, (struct sockaddr *)&far6, sizeof far6), ENETUNREACH,
		   "UDP sendto far");
	close(s);
}

static void case_fail_open(void)
{
	struct sockaddr_in any = v4("0.0.0.0", 0), far = v4(FAR, 80);
	socklen_t l = sizeof any;
	int s = socket(AF_INET, SOCK_STREAM, 0);

	CHECK(bind(s, (struct sockaddr *)&any, sizeof any) == 0, "bind wildcard on the kernel");
	CHECK(listen(s, 1) == 0, "listen on the kernel");
	CHECK(getsockname(s, (struct sockaddr *)&any, &l) == 0 && any.sin_port != 0,
	      "kernel port assigned");
	close(s);
	s = socket(AF_INET, SOCK_STREAM, 0);
	/* No route in this namespace: the kernel's own answer. */
	EXPECT_ERR(connect(s, (struct sockaddr *)&far, sizeof far), ENETUNREACH,
		   "connect far on the kernel");
	close(s);
}

/* The fd table follows dup, dup2, dup3, F_DUPFD, close, close_range and
 * closefrom: a pending socket's copies answer ENETUNREACH (fail closed), a
 * number that is no longer a pending socket answers natively. */
static void case_table(void)
{
	struct sockaddr_in far = v4(FAR, 80);
	struct sockaddr *fa = (struct sockaddr *)&far;
	int s, d, u;

	s = socket(AF_INET, SOCK_STREAM, 0);
	d = dup(s);
	close(s);
	EXPECT_ERR(connect(d, fa, sizeof far), ENETUNREACH, "dup copies the entry");
	CHECK(dup2(d, 60) == 60, "dup2");
	EXPECT_ERR(connect(60, fa, sizeof far), ENETUNREACH, "dup2 copies the entry");
	CHECK(dup3(d, 61, O_CLOEXEC) == 61, "dup3");
	EXPECT_ERR(connect(61, fa, sizeof far), ENETUNREACH, "dup3 copies the entry");
	CHECK(fcntl(d, F_DUPFD, 70) == 70, "F_DUPFD");
	EXPECT_ERR(connect(70, fa, sizeof far), ENETUNREACH, "F_DUPFD copies the entry");

	u = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(dup2(u, 60) == 60, "dup2 of an AF_UNIX socket onto a pending one");
	EXPECT_ERR(connect(60, fa, sizeof far), EINVAL, "dup2 target forgets the entry");

	close(61);
	CHECK(dup2(u, 61) == 61, "reuse after close");
	EXPECT_ERR(connect(61, fa, sizeof far), EINVAL, "close forgets the entry");

	CHECK(close_range(70, 70, 0) == 0, "close_range");
	CHECK(dup2(u, 70) == 70, "reuse after close_range");
	EXPECT_ERR(connect(70, fa, sizeof far), EINVAL, "close_range forgets the entry");

	s = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(dup2(s, 90) == 90, "dup2 to 90");
	closefrom(80);
	CHECK(fcntl(90, F_GETFD) == -1 && errno == EBADF, "closefrom closed 90");
	CHECK(dup2(u, 90) == 90, "reuse after closefrom");
	EXPECT_ERR(connect(90, fa, sizeof far), EINVAL, "closefrom forgets the entry");

	CHECK(close_range(80, 100, CLOSE_RANGE_CLOEXEC) == 0, "close_range CLOEXEC");
	CHECK(fcntl(90, F_GETFD) == FD_CLOEXEC, "CLOSE_RANGE_CLOEXEC only sets the flag");
	close(s);
	close(u);
	close(d);
	close(60);
	close(90);
}

static void case_fork(void)
{
	struct sockaddr_in far = v4(FAR, 80);
	int s = socket(AF_INET, SOCK_STREAM, 0), st = 0;
	pid_t p = fork();

	if (p == 0) {
		int rc = connect(s, (struct sockaddr *)&far, sizeof far);
		_exit(rc == -1 && errno == ENETUNREACH ? 0 : 1);
	}
	CHECK(p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "fork child sees the pending socket fail closed");
	close(s);
}

/* exec: MPSHIM_FDS names descriptors the new image adopts; the shim passes
 * them on at the next exec. Stage 1 builds the environment by hand. */
static void case_exec(const char *self, int stage)
{
	int v = 0;
	socklen_t l = sizeof v;

	if (stage == 1) {
		int sv[2], p[2];
		CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0 && pipe(p) == 0, "setup");
		dup2(sv[0], 47);
		dup2(p[0], 48);
		setenv("MPSHIM_FDS", "47:9:s4,48:10:s4,49:11:d6", 1);
		setenv("MPSHIM_CLIENT", "5", 1);
		fflush(stdout);
		/* The raw system call: the shim's execve would replace the
		 * hand-made variable with its own (empty) table. */
		char *argv[] = { (char *)self, "exec2", NULL };
		syscall(SYS_execve, self, argv, environ);
		CHECK(0, "execve: %s", strerror(errno));
		return;
	}
	CHECK(getenv("MPSHIM_FDS") == NULL && getenv("MPSHIM_CLIENT") == NULL,
	      "stage %d: MPSHIM_FDS consumed", stage);
	EXPECT_ERR(getsockopt(47, SOL_SOCKET, SO_TYPE, &v, &l), ENETUNREACH,
		   "adopted AF_UNIX fd is an INS socket");
	EXPECT_ERR(getsockopt(48, SOL_SOCKET, SO_TYPE, &v, &l), ENOTSOCK,
		   "a pipe is not adopted");
	if (stage == 2) {
		char *argv[] = { (char *)self, "exec3", NULL };
		fflush(stdout);
		execv(self, argv);
		CHECK(0, "execv: %s", strerror(errno));
	}
}

static void case_log(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	errno = 777;
	close(s);
	CHECK(errno == 777, "logging keeps errno");
}

int main(int argc, char **argv)
{
	const char *c = argc > 1 ? argv[1] : "";

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(c, "native"))
		case_native();
	else if (!strcmp(c, "loopback"))
		case_loopback();
	else if (!strcmp(c, "loopback-ins"))
		case_loopback_ins();
	else if (!strcmp(c, "fail-closed"))
		case_fail_closed();
	else if (!strcmp(c, "fail-open"))
		case_fail_open();
	else if (!strcmp(c, "table"))
		case_table();
	else if (!strcmp(c, "fork"))
		case_fork();
	else if (!strcmp(c, "exec"))
		case_exec(argv[0], 1);
	else if (!strcmp(c, "exec2"))
		case_exec(argv[0], 2);
	else if (!strcmp(c, "exec3"))
		case_exec(argv[0], 3);
	else if (!strcmp(c, "log"))
		case_log();
	else {
		fprintf(stderr, "unknown case %s\n", c);
		return 100;
	}
	return failures;
}
