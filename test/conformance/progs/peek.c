/* MSG_DONTWAIT on an empty socket is EAGAIN; MSG_PEEK leaves the data;
 * FIONREAD counts it; MSG_WAITALL gathers. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[16] = { 0 };
	int s, n = -1;
	struct pollfd p;

	init(argc, argv);
	s = dial(AF_INET, PORT_ECHO);
	res("recv MSG_DONTWAIT empty", recv(s, buf, sizeof buf, MSG_DONTWAIT));
	res("send", send(s, "xyz", 3, 0));
	p = (struct pollfd){ s, POLLIN, 0 };
	poll(&p, 1, 5000);
	usleep(50000);
	ioctl(s, FIONREAD, &n);
	say("FIONREAD: %d", n);
	ssize_t r = recv(s, buf, sizeof buf, MSG_PEEK);
	say("peek: %zd %.3s", r, buf);
	memset(buf, 0, sizeof buf);
	r = recv(s, buf, sizeof buf, 0);
	say("recv: %zd %.3s", r, buf);
	res("send", send(s, "12", 2, 0));
	usleep(20000);
	res("send", send(s, "34", 2, 0));
	memset(buf, 0, sizeof buf);
	r = recv(s, buf, 4, MSG_WAITALL);
	say("recv MSG_WAITALL: %zd %.4s", r, buf);
	close(s);
	return 0;
}
