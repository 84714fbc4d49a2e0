package watch

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mpshim/mpshim/internal/units"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/split/gateway"
)

// maxSplitStreams bounds the carried streams shown per peer; the rest are
// summed up in one line.
const maxSplitStreams = 20

// FetchSplit asks the API for the split tunnel: each peer with its
// subflows and the streams inside its session. A daemon without a split
// gateway answers none; one older than this netflow is taken as one
// without.
func FetchSplit(ctx context.Context, c *api.Client) ([]gateway.PeerStatus, error) {
	resp, err := c.Call(ctx, api.Request{Op: api.OpSplitStatus})
	if err != nil {
		if strings.Contains(err.Error(), "unknown operation") {
			return nil, nil
		}
		return nil, err
	}
	return resp.Split, nil
}

// RenderSplit writes the split tunnel's section of a frame at now: per
// peer, its session, then one line per subflow (path) and one per stream
// carried inside the session.
func RenderSplit(w io.Writer, peers []gateway.PeerStatus, now time.Time) error {
	if len(peers) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, p := range peers {
		state := "down"
		if p.Up {
			state = "up " + now.Sub(p.Since).Round(time.Second).String()
		}
		d := p.Counters.Dropped
		fmt.Fprintf(tw, "\nSPLIT PEER %s  %s  sessions %d  streams %d  resent %d  dropped %d\n", p.Name, state, p.Sessions, len(p.Carried),
			p.Counters.Retransmits, d.Short+d.Session+d.Epoch+d.Replay+d.Auth+p.Counters.Malformed)
		if len(p.Paths) > 0 {
			fmt.Fprintln(tw, "SUBFLOW\tLINK\tSTATE\tSRTT\tRATE\tLOSS\tSHARE\tSENT\tRESENT")
		}
		for i, ps := range p.Paths {
			st := "up"
			switch {
			case !ps.Up:
				st = "down"
			case ps.Suspect:
				st = "suspect"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%v\t%.1f Mbit/s\t%.2f%%\t%.0f%%\t%s\t%d\n", i, ps.Link, st, ps.SRTT.Round(100*time.Microsecond),
				ps.RateMbit, 100*ps.Loss, 100*ps.Share, units.Bytes(float64(ps.BytesSent)), ps.Resent)
		}
		if len(p.Carried) > 0 {
			fmt.Fprintln(tw, "STREAM\tDIR\tDESTINATION\tAGE\t→TUNNEL\t←TUNNEL")
		}
		for i, s := range p.Carried {
			if i == maxSplitStreams {
				fmt.Fprintf(tw, "…\t%d more\n", len(p.Carried)-i)
				break
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%v\t%s\t%s\n", s.ID, s.Dir, s.Dst, now.Sub(s.Since).Round(time.Second),
				units.Bytes(float64(s.Sent)), units.Bytes(float64(s.Received)))
		}
	}
	return tw.Flush()
}
