// Package collector is the daemon's view of every INS's flows: it merges
// the batches the INS flow tables hand out (flowtable.Batch) into one set of
// flows with rates, keeps ended flows visible for a while, answers queries
// for `netflow watch`, and decides what to export: a record for each flow
// that ended and, for a flow that goes on, one every active timeout, each
// with the counts since the previous record (IPFIX delta counters).
package collector

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/flowtable"
)

// Defaults of Config.
const (
	DefaultActiveTimeout = 60 * time.Second
	DefaultKeepEnded     = 30 * time.Second
)

// Config tunes a Collector. Zero fields take defaults.
type Config struct {
	// ActiveTimeout is how often a long flow is exported.
	ActiveTimeout time.Duration
	// KeepEnded is how long an ended flow stays in query results.
	KeepEnded time.Duration
	// Interface returns the export interface index of an uplink name
	// (1-based; 0 unknown). Nil means 0 for all.
	Interface func(uplink string) uint32
}

// flowKey identifies one flow: its INS and its sequence number there.
type flowKey struct {
	ins int
	seq uint64
}

type state struct {
	f netflow.Flow
	// gen is the generation of the last change.
	gen uint64
	// updated is when the counters last changed.
	updated time.Time
	// exported are the counters already exported, expStart the start of
	// the next export interval.
	expFwd, expRev netflow.Counters
	expStart       time.Time
	ended          time.Time // zero while live
}

// INSStats is what the collector knows of one INS's flow table.
type INSStats struct {
	flowtable.Stats
	// Updated is when the INS last reported.
	Updated time.Time
}

// Collector merges flow batches; it is safe for concurrent use.
type Collector struct {
	cfg Config

	mu    sync.Mutex
	flows map[flowKey]*state
	// peak is the most flows held since flows was made (see shrink).
	peak  int
	gen   uint64
	stats map[int]INSStats
}

// shrinkMin is the least peak whose map shrink rebuilds: below it the
// tables are too small to matter.
const shrinkMin = 1024

// shrink rebuilds the flow map once it holds a quarter or less of its
// peak. A Go map keeps the tables of its largest size after its entries are
// deleted, so a burst of connections (10,000 flows, kept KeepEnded after
// they end) would leave the daemon holding their slots for good. c.mu is
// held.
func (c *Collector) shrink() {
	if c.peak < shrinkMin || len(c.flows) > c.peak/4 {
		return
	}
	m := make(map[flowKey]*state, len(c.flows))
	for k, st := range c.flows {
		m[k] = st
	}
	c.flows, c.peak = m, len(m)
}

// New returns an empty collector.
func New(cfg Config) *Collector {
	if cfg.ActiveTimeout <= 0 {
		cfg.ActiveTimeout = DefaultActiveTimeout
	}
	if cfg.KeepEnded <= 0 {
		cfg.KeepEnded = DefaultKeepEnded
	}
	if cfg.Interface == nil {
		cfg.Interface = func(string) uint32 { return 0 }
	}
	return &Collector{cfg: cfg, flows: map[flowKey]*state{}, stats: map[int]INSStats{}}
}

// PIDFunc returns the process owning a socket group (0 if unknown).
type PIDFunc func(group uint64) int

// Update merges one batch from INS ins received at now and returns the
// export records of the flows that ended in it.
func (c *Collector) Update(ins int, bt *flowtable.Batch, now time.Time, pid PIDFunc) []netflow.ExportRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.stats[ins] = INSStats{Stats: bt.Stats, Updated: now}
	var out []netflow.ExportRecord
	for i := range bt.Records {
		r := &bt.Records[i]
		k := flowKey{ins, r.Seq}
		st := c.flows[k]
		if st == nil {
			st = &state{expStart: r.First}
			st.f = netflow.Flow{
				ID: netflow.FlowID(ins, r.Key), INS: ins, Uplink: r.Uplink, Proto: netflow.Proto(r.Key.Proto),
				Src: r.Key.Src, SrcPort: r.Key.SrcPort, Dst: r.Key.Dst, DstPort: r.Key.DstPort, First: r.First,
				Dir: netflow.Out,
			}
			if r.Inbound {
				st.f.Dir = netflow.In
			}
			st.updated = r.First
			c.flows[k] = st
			c.peak = max(c.peak, len(c.flows))
		} else if !st.ended.IsZero() {
			// Already ended: a repeated record changes nothing.
			continue
		}
		f := &st.f
		// Rates over the time since the previous report of this flow.
		if dt := now.Sub(st.updated).Seconds(); dt > 0.05 && r.Fwd.Bytes+r.Rev.Bytes >= f.Bytes() {
			f.BytesPerSec = float64(r.Fwd.Bytes+r.Rev.Bytes-f.Bytes()) / dt
			f.PacketsPerSec = float64(r.Fwd.Packets+r.Rev.Packets-f.Packets()) / dt
		}
		f.Fwd, f.Rev, f.Last, f.Time = r.Fwd, r.Rev, r.Last, now
		if r.Group != 0 && pid != nil && f.PID == 0 {
			f.PID = pid(r.Group)
		}
		st.updated, st.gen = now, c.gen
		if r.End != netflow.EndNone {
			f.End = r.End
			st.ended = now
			out = append(out, c.export(st, r.End))
		}
	}
	return out
}

// export makes the record of st's counts since its last export and marks
// them exported. c.mu is held.
func (c *Collector) export(st *state, why netflow.EndReason) netflow.ExportRecord {
	f := &st.f
	r := netflow.ExportRecord{
		Domain: uint32(f.INS), Key: f.Key(), Uplink: f.Uplink, Interface: c.cfg.Interface(f.Uplink),
		Inbound: f.Dir == netflow.In, Fwd: f.Fwd.Sub(st.expFwd), Rev: f.Rev.Sub(st.expRev),
		Start: st.expStart, End: f.Last, Reason: why,
	}
	st.expFwd, st.expRev, st.expStart = f.Fwd, f.Rev, f.Last
	return r
}

// Expire returns the export records that are due at now: flows that have
// been live for the active timeout since their last export (EndActive, if
// they counted anything since). It also drops ended flows kept longer than
// KeepEnded.
func (c *Collector) Expire(now time.Time) []netflow.ExportRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []netflow.ExportRecord
	for k, st := range c.flows {
		if !st.ended.IsZero() {
			if now.Sub(st.ended) >= c.cfg.KeepEnded {
				delete(c.flows, k)
			}
			continue
		}
		if now.Sub(st.expStart) < c.cfg.ActiveTimeout {
			continue
		}
		if st.f.Fwd.Packets == st.expFwd.Packets && st.f.Rev.Packets == st.expRev.Packets {
			continue // nothing new; the idle timeout will end it
		}
		out = append(out, c.export(st, netflow.EndActive))
	}
	c.shrink()
	sortRecords(out)
	return out
}

// Forget ends every flow of an INS that is gone (EndForced) and returns
// their export records.
func (c *Collector) Forget(ins int, now time.Time) []netflow.ExportRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.stats, ins)
	var out []netflow.ExportRecord
	for k, st := range c.flows {
		if k.ins != ins || !st.ended.IsZero() {
			continue
		}
		st.f.End, st.f.Time, st.f.BytesPerSec, st.f.PacketsPerSec = netflow.EndForced, now, 0, 0
		st.ended, st.gen = now, c.gen
		out = append(out, c.export(st, netflow.EndForced))
	}
	sortRecords(out)
	return out
}

// FlushAll ends every live flow (EndForced), as when the isolator stops,
// and returns their export records.
func (c *Collector) FlushAll(now time.Time) []netflow.ExportRecord {
	c.mu.Lock()
	var ids []int
	for ins := range c.stats {
		ids = append(ids, ins)
	}
	for k, st := range c.flows {
		if st.ended.IsZero() && !slices.Contains(ids, k.ins) {
			ids = append(ids, k.ins)
		}
	}
	c.mu.Unlock()
	var out []netflow.ExportRecord
	for _, ins := range ids {
		out = append(out, c.Forget(ins, now)...)
	}
	return out
}

func sortRecords(rs []netflow.ExportRecord) {
	slices.SortFunc(rs, func(a, b netflow.ExportRecord) int {
		return cmp.Or(cmp.Compare(a.Domain, b.Domain), a.Start.Compare(b.Start))
	})
}

// Query selects flows.
type Query struct {
	// Match, if not nil, keeps only the flows it accepts.
	Match func(*netflow.Flow) bool
	// Since keeps only flows changed after this generation (0: all).
	Since uint64
	// After and Limit page through the result: flows are ordered by
	// INS and sequence; After is the Cursor of the last flow of the
	// previous page, Limit the page size (0: no limit).
	After Cursor
	Limit int
}

// Cursor is a position in a query's order.
type Cursor struct {
	INS int    `json:"ins"`
	Seq uint64 `json:"seq"`
}

// Result is one page of a query.
type Result struct {
	// Gen is the generation the result reflects: pass it as Since to
	// get only later changes.
	Gen   uint64
	Flows []netflow.Flow
	// Next is the cursor to continue from when More is set.
	Next Cursor
	More bool
}

// Query returns the flows q selects, with rates of flows that have not
// changed for two seconds reported as zero.
func (c *Collector) Query(q Query, now time.Time) Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]flowKey, 0, len(c.flows))
	for k, st := range c.flows {
		if st.gen <= q.Since {
			continue
		}
		if k.ins < q.After.INS || (k.ins == q.After.INS && k.seq <= q.After.Seq) {
			continue
		}
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b flowKey) int { return cmp.Or(cmp.Compare(a.ins, b.ins), cmp.Compare(a.seq, b.seq)) })
	res := Result{Gen: c.gen}
	for _, k := range keys {
		st := c.flows[k]
		f := st.f
		if st.ended.IsZero() && now.Sub(st.updated) > 2*time.Second {
			f.BytesPerSec, f.PacketsPerSec = 0, 0
		}
		if q.Match != nil && !q.Match(&f) {
			continue
		}
		if q.Limit > 0 && len(res.Flows) == q.Limit {
			res.More = true
			break
		}
		res.Flows = append(res.Flows, f)
		res.Next = Cursor{INS: k.ins, Seq: k.seq}
	}
	return res
}

// Stats returns the flow table counters of every INS that reported.
func (c *Collector) Stats() map[int]INSStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int]INSStats, len(c.stats))
	for k, v := range c.stats {
		out[k] = v
	}
	return out
}

// Active counts the live flows per INS and uplink.
func (c *Collector) Active() map[int]map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[int]map[string]int{}
	for k, st := range c.flows {
		if !st.ended.IsZero() {
			continue
		}
		if out[k.ins] == nil {
			out[k.ins] = map[string]int{}
		}
		out[k.ins][st.f.Uplink]++
	}
	return out
}
