// Package watch is the engine of `netflow watch` and `netflow ls`: it keeps
// a client-side view of the flows from a stream of updates (the isolator
// API's flow pages, or a recorded `-o json` stream), and renders frames:
// totals per uplink and per INS, then the top flows or the top groups of an
// aggregation.
package watch

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mpshim/mpshim/internal/units"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/query"
)

// viewKey tells flows apart: a conversation (ID) on one uplink, started at
// one time (a flow that ended and came back is another).
type viewKey struct {
	id, uplink string
	first      int64
}

func keyOf(f *netflow.Flow) viewKey { return viewKey{f.ID, f.Uplink, f.First.UnixNano()} }

// View is the set of flows as the updates so far describe it.
type View struct {
	flows map[viewKey]*netflow.Flow
	// gone are the flows that ended in the last Apply: shown once, then
	// dropped.
	gone []viewKey
}

// NewView returns an empty view.
func NewView() *View { return &View{flows: map[viewKey]*netflow.Flow{}} }

// Apply merges one interval's updates. Flows that ended in the previous
// interval leave the view; flows without an update now have no rate.
func (v *View) Apply(updates []netflow.Flow) {
	for _, k := range v.gone {
		delete(v.flows, k)
	}
	v.gone = v.gone[:0]
	for _, f := range v.flows {
		f.BytesPerSec, f.PacketsPerSec = 0, 0
	}
	for i := range updates {
		u := updates[i]
		k := keyOf(&u)
		v.flows[k] = &u
		if u.End != netflow.EndNone {
			v.gone = append(v.gone, k)
		}
	}
}

// Flows returns the flows in the view, in no particular order.
func (v *View) Flows() []netflow.Flow {
	out := make([]netflow.Flow, 0, len(v.flows))
	for _, f := range v.flows {
		out = append(out, *f)
	}
	return out
}

// Len is the number of flows in the view.
func (v *View) Len() int { return len(v.flows) }

// Options shape a frame.
type Options struct {
	// Sort is query.ByRate, ByBytes or ByPackets.
	Sort string
	// Top bounds the rows of flows or groups (0: all).
	Top int
	// AggregateBy, if set, shows groups (query.AggSrc …) instead of flows.
	AggregateBy string
	// Totals adds the per-uplink and per-INS totals.
	Totals bool
}

// Check reports bad options.
func (o Options) Check() error {
	if err := query.CheckSort(o.Sort); err != nil {
		return err
	}
	if o.Top < 0 {
		return fmt.Errorf("top %d: want 0 (all) or more", o.Top)
	}
	if o.AggregateBy != "" && !slices.Contains(query.AggregateKeys, o.AggregateBy) {
		return fmt.Errorf("aggregate by %q: want one of %s", o.AggregateBy, strings.Join(query.AggregateKeys, ", "))
	}
	return nil
}

func count(n float64) string {
	switch {
	case n >= 1e9:
		return strconv.FormatFloat(n/1e9, 'f', 1, 64) + "G"
	case n >= 1e6:
		return strconv.FormatFloat(n/1e6, 'f', 1, 64) + "M"
	case n >= 1e4:
		return strconv.FormatFloat(n/1e3, 'f', 1, 64) + "k"
	}
	return strconv.FormatFloat(n, 'f', 0, 64)
}

func endpoint(a fmt.Stringer, port uint16, proto netflow.Proto) string {
	s := a.String()
	if strings.Contains(s, ":") {
		s = "[" + s + "]"
	}
	if proto == netflow.ProtoICMP || proto == netflow.ProtoICMPv6 {
		if port == 0 {
			return s
		}
		return fmt.Sprintf("%s type %d/%d", s, port>>8, port&0xff)
	}
	return s + ":" + strconv.Itoa(int(port))
}

// Render writes one frame of flows at now.
func Render(w io.Writer, flows []netflow.Flow, o Options, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	var rate, pps float64
	var bytes uint64
	for i := range flows {
		rate += flows[i].BytesPerSec
		pps += flows[i].PacketsPerSec
		bytes += flows[i].Bytes()
	}
	fmt.Fprintf(tw, "%s  %d flows  %s/s  %s pkt/s  %s total  (top by %s)\n", now.Format("15:04:05"), len(flows), units.Bytes(rate), count(pps), units.Bytes(float64(bytes)), o.Sort)
	if o.Totals {
		for _, by := range []string{query.AggUplink, query.AggINS} {
			groups, err := query.Aggregate(flows, by, o.Sort)
			if err != nil {
				return err
			}
			slices.SortFunc(groups, func(a, b query.Group) int { return cmp.Compare(a.Key, b.Key) })
			fmt.Fprintf(tw, "\n%s\tFLOWS\tRATE\tPKT/S\tBYTES\tPACKETS\n", strings.ToUpper(by))
			for _, g := range groups {
				fmt.Fprintf(tw, "%s\t%d\t%s/s\t%s\t%s\t%s\n", g.Key, g.Flows, units.Bytes(g.BytesPerSec), count(g.PacketsPerSec), units.Bytes(float64(g.Bytes)), count(float64(g.Packets)))
			}
		}
	}
	fmt.Fprintln(tw)
	if o.AggregateBy != "" {
		groups, err := query.Aggregate(flows, o.AggregateBy, o.Sort)
		if err != nil {
			return err
		}
		if o.Top > 0 && len(groups) > o.Top {
			groups = groups[:o.Top]
		}
		fmt.Fprintf(tw, "%s\tFLOWS\tRATE\tPKT/S\tBYTES\tPACKETS\n", strings.ToUpper(o.AggregateBy))
		for _, g := range groups {
			fmt.Fprintf(tw, "%s\t%d\t%s/s\t%s\t%s\t%s\n", g.Key, g.Flows, units.Bytes(g.BytesPerSec), count(g.PacketsPerSec), units.Bytes(float64(g.Bytes)), count(float64(g.Packets)))
		}
		return tw.Flush()
	}
	fs := slices.Clone(flows)
	query.SortFlows(fs, o.Sort)
	if o.Top > 0 && len(fs) > o.Top {
		fs = fs[:o.Top]
	}
	fmt.Fprintln(tw, "ID\tUPLINK\tPID\tPROTO\tSOURCE\tDESTINATION\tFLAGS\tRATE\tBYTES\t→BYTES\t←BYTES\tPACKETS\tAGE\tEND")
	for _, f := range fs {
		pid := "-"
		if f.PID != 0 {
			pid = strconv.Itoa(f.PID)
		}
		end := f.End.String()
		if end == "" {
			end = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.ID, f.Uplink, pid, f.Proto,
			endpoint(f.Src, f.SrcPort, f.Proto), endpoint(f.Dst, f.DstPort, f.Proto), (f.Fwd.TCPFlags | f.Rev.TCPFlags).Short(),
			units.Bytes(f.BytesPerSec), units.Bytes(float64(f.Bytes())), units.Bytes(float64(f.Fwd.Bytes)), units.Bytes(float64(f.Rev.Bytes)), count(float64(f.Packets())),
			f.Last.Sub(f.First).Round(time.Second), end)
	}
	return tw.Flush()
}

// WriteJSON writes flows as JSON lines, the format DecodeFlows reads.
func WriteJSON(w io.Writer, flows []netflow.Flow) error {
	enc := json.NewEncoder(w)
	for i := range flows {
		if err := enc.Encode(&flows[i]); err != nil {
			return err
		}
	}
	return nil
}

// Fetch asks the API for the flows changed after generation since that
// match filter, all pages of them, and returns them with the generation
// to ask from next time.
func Fetch(ctx context.Context, c *api.Client, filter []string, since uint64) ([]netflow.Flow, uint64, error) {
	q := &api.FlowQuery{Filter: filter, Since: since, Limit: api.MaxFlowPage}
	var out []netflow.Flow
	var gen uint64
	for first := true; ; first = false {
		resp, err := c.Call(ctx, api.Request{Op: api.OpFlows, Flows: q})
		if err != nil {
			return nil, since, err
		}
		p := resp.Flows
		if p == nil {
			return nil, since, fmt.Errorf("flows: the isolator answered without flows (is it older than this netflow?)")
		}
		if first {
			gen = p.Gen
			if !p.Accounting {
				return nil, since, fmt.Errorf("flows: accounting is disabled on this isolator (run without --no-flows)")
			}
		}
		out = append(out, p.Flows...)
		if !p.More || p.Next == nil {
			return out, gen, nil
		}
		q.After = p.Next
	}
}

// Replay reads a recorded flow stream and calls fn once per interval of
// its timestamps with that interval's updates, in order.
func Replay(r io.Reader, interval time.Duration, fn func(at time.Time, updates []netflow.Flow) error) error {
	var batch []netflow.Flow
	var start time.Time
	err := netflow.DecodeFlows(r, func(f netflow.Flow) error {
		if len(batch) > 0 && (f.Time.Sub(start) >= interval || f.Time.Before(start)) {
			if err := fn(start, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
		if len(batch) == 0 {
			start = f.Time
		}
		batch = append(batch, f)
		return nil
	})
	if err != nil {
		return err
	}
	if len(batch) > 0 {
		return fn(start, batch)
	}
	return nil
}
