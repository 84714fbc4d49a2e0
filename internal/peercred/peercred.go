// Package peercred reads the credentials of the process at the other end of
// a unix socket (SO_PEERCRED): the daemon checks them on its registration
// socket and on an INS's successor socket, an INS on its successor socket.
package peercred

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Of returns the pid, uid and gid the kernel recorded for the peer of c
// when the connection was made.
func Of(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}
