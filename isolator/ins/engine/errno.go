package engine

import (
	"gvisor.dev/gvisor/pkg/tcpip"

	"golang.org/x/sys/unix"
)

// ErrnoOf returns the Linux errno for a netstack error: 0 for nil, and for
// ErrClosedForReceive (a read after the peer's FIN is end of file, not an
// error). An error type the table does not know maps to EINVAL and is never a
// panic.
func ErrnoOf(err tcpip.Error) unix.Errno {
	if err == nil {
		return 0
	}
	switch err.(type) {
	case *tcpip.ErrAborted:
		return unix.EPIPE
	case *tcpip.ErrAddressFamilyNotSupported:
		return unix.EAFNOSUPPORT
	case *tcpip.ErrAlreadyBound:
		return unix.EINVAL
	case *tcpip.ErrAlreadyConnected:
		return unix.EISCONN
	case *tcpip.ErrAlreadyConnecting:
		return unix.EALREADY
	case *tcpip.ErrBadAddress, *tcpip.ErrBadBuffer:
		return unix.EFAULT
	case *tcpip.ErrBadLocalAddress:
		return unix.EADDRNOTAVAIL
	case *tcpip.ErrBroadcastDisabled:
		return unix.EACCES
	case *tcpip.ErrClosedForReceive:
		return 0
	case *tcpip.ErrClosedForSend:
		return unix.EPIPE
	case *tcpip.ErrConnectStarted:
		return unix.EINPROGRESS
	case *tcpip.ErrConnectionAborted:
		return unix.ECONNABORTED
	case *tcpip.ErrConnectionRefused:
		return unix.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		return unix.ECONNRESET
	case *tcpip.ErrDestinationRequired:
		return unix.EDESTADDRREQ
	case *tcpip.ErrDuplicateAddress, *tcpip.ErrDuplicateNICID:
		return unix.EEXIST
	case *tcpip.ErrInvalidNICID, *tcpip.ErrInvalidEndpointState, *tcpip.ErrInvalidOptionValue,
		*tcpip.ErrInvalidPortRange, *tcpip.ErrMalformedHeader, *tcpip.ErrUnknownProtocol,
		*tcpip.ErrMissingRequiredFields, *tcpip.ErrMulticastInputCannotBeOutput:
		return unix.EINVAL
	case *tcpip.ErrMessageTooLong:
		return unix.EMSGSIZE
	case *tcpip.ErrNetworkUnreachable:
		return unix.ENETUNREACH
	case *tcpip.ErrNoBufferSpace:
		return unix.ENOBUFS
	case *tcpip.ErrNoPortAvailable:
		return unix.EAGAIN
	case *tcpip.ErrHostUnreachable:
		return unix.EHOSTUNREACH
	case *tcpip.ErrHostDown:
		return unix.EHOSTDOWN
	case *tcpip.ErrNoNet:
		return unix.ENONET
	case *tcpip.ErrNoSuchFile:
		return unix.ENOENT
	case *tcpip.ErrNotConnected:
		return unix.ENOTCONN
	case *tcpip.ErrNotPermitted:
		return unix.EPERM
	case *tcpip.ErrNotSupported:
		return unix.EOPNOTSUPP
	case *tcpip.ErrPortInUse:
		return unix.EADDRINUSE
	case *tcpip.ErrQueueSizeNotSupported:
		return unix.ENOTTY
	case *tcpip.ErrTimeout:
		return unix.ETIMEDOUT
	case *tcpip.ErrUnknownDevice, *tcpip.ErrUnknownNICID:
		return unix.ENODEV
	case *tcpip.ErrUnknownProtocolOption:
		return unix.ENOPROTOOPT
	case *tcpip.ErrWouldBlock:
		return unix.EAGAIN
	case *tcpip.ErrEndpointBusy:
		return unix.EBUSY
	default:
		return unix.EINVAL
	}
}
