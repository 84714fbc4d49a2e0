package instest

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/ins/engine"
)

// The app's side of engine sockets, as the shim does it: socketpairs,
// accept records, blocking reads and writes.

// AcceptMsg is one accept record with the descriptor it carried.
type AcceptMsg struct {
	Listener, Sock engine.SockID
	Local, Peer    netip.AddrPort
	FD             int
}

// parseAddr reads the address of an accept record.
func parseAddr(b []byte) netip.AddrPort {
	port := binary.NativeEndian.Uint16(b[16:])
	if binary.NativeEndian.Uint16(b[18:]) == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[:16])), port)
}

// RecvAccept is the shim's accept: one recvmsg on the listener's fd.
func RecvAccept(t testing.TB, fd int, flags int) (AcceptMsg, error) {
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, flags|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return AcceptMsg{}, err
	}
	if n != engine.AcceptRecordSize {
		t.Fatalf("accept message is %d bytes, want %d", n, engine.AcceptRecordSize)
	}
	scms, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(scms) != 1 {
		t.Fatalf("control messages: %v %d", err, len(scms))
	}
	fds, err := unix.ParseUnixRights(&scms[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("SCM_RIGHTS: %v %v", fds, err)
	}
	return AcceptMsg{
		Listener: engine.SockID(binary.NativeEndian.Uint64(buf)),
		Sock:     engine.SockID(binary.NativeEndian.Uint64(buf[8:])),
		Local:    parseAddr(buf[16:36]),
		Peer:     parseAddr(buf[36:56]),
		FD:       fds[0],
	}, nil
}

// Listen binds a new TCP socket of e to ap and listens with backlog; it
// returns its id and the app end of its accept channel.
func Listen(t testing.TB, e *engine.Engine, ap netip.AddrPort, backlog int) (engine.SockID, int) {
	id := MustSocket(t, e, unix.AF_INET, unix.SOCK_STREAM)
	if errno := e.Bind(id, ap); errno != 0 {
		t.Fatalf("Bind: %v", errno)
	}
	app, ins := Socketpair(t, unix.SOCK_SEQPACKET)
	if errno := e.Listen(id, backlog, ins); errno != 0 {
		t.Fatalf("Listen: %v", errno)
	}
	return id, app
}

// Socketpair returns the app end (a blocking fd) and the INS end as a file.
func Socketpair(t testing.TB, typ int) (int, *os.File) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	t.Cleanup(func() { unix.Close(fds[0]) })
	return fds[0], os.NewFile(uintptr(fds[1]), "ins-end")
}

// MustSocket creates a socket of e or fails t.
func MustSocket(t testing.TB, e *engine.Engine, domain, typ int) engine.SockID {
	id, errno := e.Socket(domain, typ, 0)
	if errno != 0 {
		t.Fatalf("Socket: %v", errno)
	}
	return id
}

// Dial connects an engine socket (blocking) and returns its id and app fd.
func Dial(t testing.TB, e *engine.Engine, to netip.AddrPort) (engine.SockID, int) {
	id := MustSocket(t, e, unix.AF_INET, unix.SOCK_STREAM)
	app, ins := Socketpair(t, unix.SOCK_STREAM)
	if errno := e.Connect(id, to, ins, false); errno != 0 {
		t.Fatalf("Connect: %v", errno)
	}
	return id, app
}

// ReadAll reads fd until EOF or an error.
func ReadAll(fd int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

// WriteAll writes all of b to fd.
func WriteAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// LeU32 reads a little-endian uint32 from the start of b.
func LeU32(b []byte) uint32 {
	var v [4]byte
	copy(v[:], b)
	return uint32(v[0]) | uint32(v[1])<<8 | uint32(v[2])<<16 | uint32(v[3])<<24
}
