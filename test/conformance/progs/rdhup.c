/* A peer that sends and closes: epoll reports EPOLLIN|EPOLLRDHUP, the data
 * then EOF; poll reports POLLRDHUP. */
#include "common.h"

int main(int argc, char **argv)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET }, out;
	char buf[16] = { 0 };
	int s, ep, n;

	init(argc, argv);
	s = dial(AF_INET, PORT_HELLO);
	set_nonblock(s, 1);
	ep = epoll_create1(EPOLL_CLOEXEC);
	res("epoll_ctl", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
	/* Wait for the close itself, not just the data. */
	for (int i = 0; i < 50; i++) {
		n = epoll_wait(ep, &out, 1, 200);
		if (n == 1 && (out.events & EPOLLRDHUP))
			break;
	}
	say("epoll: in=%d rdhup=%d", !!(out.events & EPOLLIN), !!(out.events & EPOLLRDHUP));
	struct pollfd p = { s, POLLIN | POLLRDHUP, 0 };
	poll(&p, 1, 1000);
	say("poll: in=%d rdhup=%d", !!(p.revents & POLLIN), !!(p.revents & POLLRDHUP));
	ssize_t r = read(s, buf, sizeof buf);
	say("read: %zd %.5s", r, buf);
	res("read at EOF", read(s, buf, sizeof buf));
	close(ep);
	close(s);
	return 0;
}
