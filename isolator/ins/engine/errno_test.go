package engine_test

import (
	"testing"

	"github.com/mpshim/mpshim/isolator/ins/engine"

	"gvisor.dev/gvisor/pkg/tcpip"

	"golang.org/x/sys/unix"
)

// wantErrno is the expected Linux errno for each netstack error type,
// written from the Linux man pages independently of the implementation.
var wantErrno = []struct {
	err   tcpip.Error
	errno unix.Errno
}{
	{&tcpip.ErrAborted{}, unix.EPIPE},
	{&tcpip.ErrAddressFamilyNotSupported{}, unix.EAFNOSUPPORT},
	{&tcpip.ErrAlreadyBound{}, unix.EINVAL},
	{&tcpip.ErrAlreadyConnected{}, unix.EISCONN},
	{&tcpip.ErrAlreadyConnecting{}, unix.EALREADY},
	{&tcpip.ErrBadAddress{}, unix.EFAULT},
	{&tcpip.ErrBadBuffer{}, unix.EFAULT},
	{&tcpip.ErrBadLocalAddress{}, unix.EADDRNOTAVAIL},
	{&tcpip.ErrBroadcastDisabled{}, unix.EACCES},
	{&tcpip.ErrClosedForReceive{}, 0},
	{&tcpip.ErrClosedForSend{}, unix.EPIPE},
	{&tcpip.ErrConnectStarted{}, unix.EINPROGRESS},
	{&tcpip.ErrConnectionAborted{}, unix.ECONNABORTED},
	{&tcpip.ErrConnectionRefused{}, unix.ECONNREFUSED},
	{&tcpip.ErrConnectionReset{}, unix.ECONNRESET},
	{&tcpip.ErrDestinationRequired{}, unix.EDESTADDRREQ},
	{&tcpip.ErrDuplicateAddress{}, unix.EEXIST},
	{&tcpip.ErrDuplicateNICID{}, unix.EEXIST},
	{&tcpip.ErrInvalidNICID{}, unix.EINVAL},
	{&tcpip.ErrInvalidEndpointState{}, unix.EINVAL},
	{&tcpip.ErrInvalidOptionValue{}, unix.EINVAL},
	{&tcpip.ErrInvalidPortRange{}, unix.EINVAL},
	{&tcpip.ErrMalformedHeader{}, unix.EINVAL},
	{&tcpip.ErrMessageTooLong{}, unix.EMSGSIZE},
	{&tcpip.ErrNetworkUnreachable{}, unix.ENETUNREACH},
	{&tcpip.ErrNoBufferSpace{}, unix.ENOBUFS},
	{&tcpip.ErrNoPortAvailable{}, unix.EAGAIN},
	{&tcpip.ErrHostUnreachable{}, unix.EHOSTUNREACH},
	{&tcpip.ErrHostDown{}, unix.EHOSTDOWN},
	{&tcpip.ErrNoNet{}, unix.ENONET},
	{&tcpip.ErrNoSuchFile{}, unix.ENOENT},
	{&tcpip.ErrNotConnected{}, unix.ENOTCONN},
	{&tcpip.ErrNotPermitted{}, unix.EPERM},
	{&tcpip.ErrNotSupported{}, unix.EOPNOTSUPP},
	{&tcpip.ErrPortInUse{}, unix.EADDRINUSE},
	{&tcpip.ErrQueueSizeNotSupported{}, unix.ENOTTY},
	{&tcpip.ErrTimeout{}, unix.ETIMEDOUT},
	{&tcpip.ErrUnknownDevice{}, unix.ENODEV},
	{&tcpip.ErrUnknownNICID{}, unix.ENODEV},
	{&tcpip.ErrUnknownProtocol{}, unix.EINVAL},
	{&tcpip.ErrUnknownProtocolOption{}, unix.ENOPROTOOPT},
	{&tcpip.ErrWouldBlock{}, unix.EAGAIN},
	{&tcpip.ErrMissingRequiredFields{}, unix.EINVAL},
	{&tcpip.ErrMulticastInputCannotBeOutput{}, unix.EINVAL},
	{&tcpip.ErrEndpointBusy{}, unix.EBUSY},
}

func TestErrnoOf(t *testing.T) {
	if got := engine.ErrnoOf(nil); got != 0 {
		t.Fatalf("engine.ErrnoOf(nil) = %v, want 0", got)
	}
	for _, tc := range wantErrno {
		if got := engine.ErrnoOf(tc.err); got != tc.errno {
			t.Errorf("engine.ErrnoOf(%T) = %v (%d), want %v (%d)", tc.err, got, int(got), tc.errno, int(tc.errno))
		}
	}
}
