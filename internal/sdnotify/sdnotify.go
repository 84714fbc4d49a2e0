// Package sdnotify tells the service manager about the daemon's state with
// systemd's notification protocol: one datagram of newline-separated
// VARIABLE=value assignments ("READY=1", "STOPPING=1", "STATUS=…") sent to
// the AF_UNIX datagram socket named by $NOTIFY_SOCKET (a path, or an
// abstract address when it starts with '@'). Without $NOTIFY_SOCKET every
// call does nothing, so a daemon run by hand or by another supervisor is
// unaffected.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Env is the variable the service manager sets for a Type=notify service.
const Env = "NOTIFY_SOCKET"

// Common states.
const (
	// Ready says start-up is finished: the service's sockets accept.
	Ready = "READY=1"
	// Stopping says the service is shutting down.
	Stopping = "STOPPING=1"
)

// Notify sends state to $NOTIFY_SOCKET. It reports whether a notification
// was sent: false with a nil error when $NOTIFY_SOCKET is unset.
func Notify(state string) (bool, error) {
	addr := os.Getenv(Env)
	if addr == "" {
		return false, nil
	}
	return true, Send(addr, state)
}

// Send sends state to the notification socket addr.
func Send(addr, state string) error {
	name := addr
	switch {
	case strings.HasPrefix(addr, "@"):
		// Abstract namespace: Go maps a leading '@' to the NUL byte.
	case strings.HasPrefix(addr, "/"):
	default:
		return fmt.Errorf("sdnotify: %s=%q: want an absolute path or an @abstract name", Env, addr)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: sending %q: %w", state, err)
	}
	return nil
}
