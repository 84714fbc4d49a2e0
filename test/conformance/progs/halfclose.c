/* shutdown(SHUT_WR): the peer sees EOF, we still read its answer and its
 * EOF; writing afterwards is EPIPE. Also shutdown on an unconnected socket. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[16] = { 0 };
	int s;

	init(argc, argv);
	s = sock(AF_INET, SOCK_STREAM);
	res("shutdown unconnected", shutdown(s, SHUT_WR));
	close(s);
	s = dial(AF_INET, PORT_ECHO);
	res("write", write(s, "abc", 3));
	res("shutdown SHUT_WR", shutdown(s, SHUT_WR));
	say("read back: %zu %.3s", read_full(s, buf, sizeof buf), buf);
	res("read at EOF", read(s, buf, sizeof buf));
	res("send after SHUT_WR", send(s, "x", 1, MSG_NOSIGNAL));
	res("shutdown SHUT_RD", shutdown(s, SHUT_RD));
	close(s);
	return 0;
}
