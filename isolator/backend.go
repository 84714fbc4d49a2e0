package isolator

import (
	"context"
	"net/netip"
	"os"

	"github.com/mpshim/mpshim/msgproto"
)

// SockINS returns the INS that serves a socket: socket ids are global, the
// INS id in the top 16 bits and the INS's own id below, so any component
// (the daemon, an accept notification written by the INS) can route a call
// without a table.
func SockINS(sock uint64) int { return int(sock >> 48) }

// SockID makes a global socket id from an INS id and that INS's own id.
func SockID(ins int, local uint64) uint64 { return uint64(ins)<<48 | local&(1<<48-1) }

// Backend is one live INS as the app-facing side of the daemon sees it.
type Backend interface {
	// ID is the INS id.
	ID() int
	// Call forwards one socket request made on behalf of socket group
	// group (descriptors attached; their ownership passes to Call) and
	// returns the INS's reply. Socket ids in requests and replies are
	// global (see SockID). The INS refuses with EBADF a call on a socket
	// of another group; accepted connections belong to their listener's
	// group.
	Call(ctx context.Context, group uint64, m msgproto.Message, files ...*os.File) (msgproto.Message, error)
	// Forget tells the INS that socket group group is gone: every socket
	// of the group whose descriptors are all closed is released.
	Forget(group uint64)
}

// Backends is the set of live INS.
type Backends interface {
	// Pick chooses the INS for a new socket (least loaded).
	Pick() (Backend, error)
	// Get returns INS id, if it is alive.
	Get(id int) (Backend, bool)
	// All returns every live INS.
	All() []Backend
	// Owner returns the live INS that has address a on one of its
	// uplinks, if one has.
	Owner(a netip.Addr) (Backend, bool)
}
