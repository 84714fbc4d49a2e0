package isolator

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/collector"
	"github.com/mpshim/mpshim/netflow/flowtable"
	"github.com/mpshim/mpshim/netflow/ipfix"
	"github.com/mpshim/mpshim/netflow/query"
)

// flowPoll is how often the daemon collects every INS's flow records.
const flowPoll = time.Second

// maxFlowPages bounds the batches read from one INS per poll.
const maxFlowPages = 1024

// flowService collects the INS flow tables into one view, answers OpFlows
// and exports IPFIX.
type flowService struct {
	d   *Daemon
	cfg config.Flows
	col *collector.Collector
	exp *ipfix.Exporter // nil without collectors
	log *slog.Logger

	pollMu sync.Mutex // one poll at a time
}

// flowTableConfig is the flow table an INS gets.
func (d *Daemon) flowTableConfig() flowtable.Config {
	f := d.cfg.Flows
	return flowtable.Config{Disable: f.Disable, MaxFlows: f.MaxFlows, IdleTimeout: f.IdleTimeout}
}

// startFlows starts collecting flows (unless accounting is off) and the
// IPFIX export. The returned stop makes a last collection, exports every
// live flow as ended (forcedEnd) and closes the exporter; call it before
// the INS are stopped.
func (d *Daemon) startFlows(ctx context.Context) (stop func(), err error) {
	fs := &flowService{d: d, cfg: d.cfg.Flows, log: d.log.With("component", "flows")}
	fs.col = collector.New(collector.Config{ActiveTimeout: fs.cfg.ActiveTimeout, Interface: d.uplinkIndex})
	d.mu.Lock()
	d.flows = fs
	d.mu.Unlock()
	if fs.cfg.Disable {
		return func() {}, nil
	}
	var cols []ipfix.Collector
	for _, a := range fs.cfg.IPFIX {
		cols = append(cols, ipfix.Collector{Addr: a, Format: ipfix.FormatIPFIX})
	}
	for _, a := range fs.cfg.NetFlow9 {
		cols = append(cols, ipfix.Collector{Addr: a, Format: ipfix.FormatNetFlow9})
	}
	if len(cols) > 0 {
		if fs.exp, err = ipfix.NewExporter(ctx, cols, fs.cfg.TemplateRefresh); err != nil {
			return nil, err
		}
		d.log.Info("exporting flows", "ipfix", fs.cfg.IPFIX, "netflow9", fs.cfg.NetFlow9)
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(flowPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-pctx.Done():
				return
			case <-t.C:
				fs.poll(pctx)
			}
		}
	}()
	return func() {
		cancel()
		<-done
		fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer fcancel()
		fs.poll(fctx)
		now := time.Now()
		fs.export(now, fs.col.FlushAll(now))
		if fs.exp != nil {
			fs.exp.Close()
		}
	}, nil
}

// uplinkIndex is an uplink's interface index in flow exports: its
// position in the configuration, from 1.
func (d *Daemon) uplinkIndex(name string) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, u := range d.uplinks {
		if u.cfg.Name == name {
			return uint32(i + 1)
		}
	}
	return 0
}

func (d *Daemon) interfaces() []ipfix.Interface {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]ipfix.Interface, len(d.uplinks))
	for i, u := range d.uplinks {
		out[i] = ipfix.Interface{Index: uint32(i + 1), Name: u.cfg.Name}
	}
	return out
}

// poll collects every INS once, ends the flows of INS that are gone and
// exports what is due.
func (fs *flowService) poll(ctx context.Context) {
	fs.pollMu.Lock()
	defer fs.pollMu.Unlock()
	pids := fs.pidCache()
	live := map[int]bool{}
	var out []netflow.ExportRecord
	var domains []uint32
	for _, b := range fs.d.All() {
		p := b.(*insProc)
		live[p.id] = true
		domains = append(domains, uint32(p.id))
		recs, err := fs.pull(ctx, p, pids)
		if err != nil {
			fs.log.Debug("flow collection", "ins", p.id, "err", err)
		}
		out = append(out, recs...)
	}
	now := time.Now()
	for id := range fs.col.Stats() {
		if !live[id] {
			out = append(out, fs.col.Forget(id, now)...)
			if fs.exp != nil {
				defer fs.exp.Forget(uint32(id))
			}
		}
	}
	out = append(out, fs.col.Expire(now)...)
	if fs.exp != nil {
		if err := fs.exp.Refresh(now, domains, fs.d.interfaces()); err != nil {
			fs.log.Warn("flow export templates", "err", err)
		}
	}
	fs.export(now, out)
}

func (fs *flowService) export(now time.Time, recs []netflow.ExportRecord) {
	if fs.exp == nil || len(recs) == 0 {
		return
	}
	if err := fs.exp.Export(now, recs, fs.d.interfaces()); err != nil {
		fs.log.Warn("flow export", "err", err)
	}
}

// pull reads batches from one INS until its collection round is complete.
func (fs *flowService) pull(ctx context.Context, p *insProc, pid collector.PIDFunc) ([]netflow.ExportRecord, error) {
	req, _ := json.Marshal(ins.ManageRequest{Op: ins.ManageFlows})
	var out []netflow.ExportRecord
	for range maxFlowPages {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := p.ch.Call(cctx, ctrl.Frame{Kind: ctrl.KindManage}, req)
		cancel()
		if err != nil {
			return out, fmt.Errorf("ins %d: flows: %w", p.id, err)
		}
		m.CloseFiles()
		bt, err := flowtable.DecodeBatch(m.Payload)
		if err != nil {
			return out, fmt.Errorf("ins %d: flows: %w", p.id, err)
		}
		out = append(out, fs.col.Update(p.id, &bt, time.Now(), pid)...)
		if !bt.More {
			return out, nil
		}
	}
	return out, fmt.Errorf("ins %d: flows: more than %d batches in one round", p.id, maxFlowPages)
}

// pidCache returns a PIDFunc that looks each socket group up once.
func (fs *flowService) pidCache() collector.PIDFunc {
	fs.d.mu.Lock()
	app := fs.d.app
	fs.d.mu.Unlock()
	if app == nil {
		return nil
	}
	cache := map[uint64]int{}
	return func(g uint64) int {
		if v, ok := cache[g]; ok {
			return v
		}
		v := app.GroupPID(g)
		cache[g] = v
		return v
	}
}

// GroupPID returns the process that stands for a socket group: its oldest
// live member (for a forking server, the master), 0 if none is left.
func (s *AppServer) GroupPID(group uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *client
	for _, c := range s.clients {
		if c.group == group && (best == nil || c.id < best.id) {
			best = c
		}
	}
	if best == nil {
		return 0
	}
	return int(best.pid)
}

// flowsOp answers OpFlows.
func (d *Daemon) flowsOp(req api.Request) api.Response {
	d.mu.Lock()
	fs := d.flows
	d.mu.Unlock()
	if fs == nil {
		return api.Errorf("flows: the flow collector is not running")
	}
	q := api.FlowQuery{}
	if req.Flows != nil {
		q = *req.Flows
	}
	flt, err := query.ParseFilter(q.Filter)
	if err != nil {
		return api.Errorf("flows: %v", err)
	}
	if q.Limit <= 0 {
		q.Limit = api.DefaultFlowPage
	}
	cq := collector.Query{Match: flt.Match, Since: q.Since, Limit: min(q.Limit, api.MaxFlowPage)}
	if q.After != nil {
		cq.After = collector.Cursor{INS: q.After.INS, Seq: q.After.Seq}
	}
	res := fs.col.Query(cq, time.Now())
	page := &api.FlowPage{Gen: res.Gen, Flows: res.Flows, More: res.More, Accounting: !fs.cfg.Disable}
	if page.Flows == nil {
		page.Flows = []netflow.Flow{}
	}
	if res.More {
		page.Next = &api.FlowCursor{INS: res.Next.INS, Seq: res.Next.Seq}
	}
	for id, st := range fs.col.Stats() {
		page.Tables = append(page.Tables, api.FlowTable{INS: id, Flows: st.Flows, Created: st.Created, Evicted: st.Evicted, Lost: st.Lost})
	}
	sort.Slice(page.Tables, func(i, j int) bool { return page.Tables[i].INS < page.Tables[j].INS })
	return api.Response{OK: true, Flows: page}
}
