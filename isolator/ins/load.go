package ins

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mpshim/mpshim/isolator/ctrl"
)

// LoadReportGap is the shortest time between two load notices of an INS:
// under connection churn the notices coalesce, and the daemon counts the
// sockets it placed since the last notice itself (see Load).
const LoadReportGap = 10 * time.Millisecond

// Notice is the body of a KindNotify frame from an INS to the daemon.
type Notice struct {
	// Load, if set, is the INS's current load.
	Load *Load `json:"load,omitempty"`
}

// Load is how busy an INS is, sent whenever it changes (at most every
// LoadReportGap). Sockets ends when the app's last descriptor is closed, which
// only the INS sees; the daemon adds the sockets it placed after the INS
// counted Placed to get the live count without asking.
type Load struct {
	// Sockets is the number of live socket records (listeners, connections
	// the app made or accepted, datagram sockets).
	Sockets int `json:"sockets"`
	// Placed counts the sockets created by Socket requests so far.
	Placed uint64 `json:"placed"`
}

// maxNotice bounds a notice the daemon accepts.
const maxNotice = 4096

// ParseNotice decodes a notice from an INS. It is strict: a notice that is
// too long, not JSON of the expected shape or carries impossible numbers is
// an error.
func ParseNotice(b []byte) (Notice, error) {
	var n Notice
	if len(b) > maxNotice {
		return Notice{}, fmt.Errorf("notice of %d bytes (max %d)", len(b), maxNotice)
	}
	if err := json.Unmarshal(b, &n); err != nil {
		return Notice{}, fmt.Errorf("notice: %w", err)
	}
	if n.Load == nil {
		return Notice{}, errors.New("notice: empty")
	}
	if n.Load.Sockets < 0 || n.Load.Sockets > 1<<40 {
		return Notice{}, fmt.Errorf("notice: %d sockets", n.Load.Sockets)
	}
	return n, nil
}

// loadChanged asks for a load notice; it never blocks.
func (s *Server) loadChanged() {
	select {
	case s.loadKick <- struct{}{}:
	default:
	}
}

// reportLoad sends a load notice after each change, coalescing changes
// within LoadReportGap, until ctx ends.
func (s *Server) reportLoad(ctx context.Context) {
	var last Load
	gap := time.NewTimer(0)
	defer gap.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.loadKick:
		}
		l := Load{Sockets: s.eng.Live(), Placed: s.placed.Load()}
		if l != last {
			b, _ := json.Marshal(Notice{Load: &l})
			if err := s.conn().Send(ctrl.Frame{Kind: ctrl.KindNotify}.Append(nil, b)); err != nil {
				// The daemon is gone: a successor gets the load once
				// it connects (Serve kicks it).
				last = Load{}
			} else {
				last = l
			}
		}
		gap.Reset(LoadReportGap)
		select {
		case <-ctx.Done():
			return
		case <-gap.C:
		}
	}
}
