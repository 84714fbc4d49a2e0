package isolator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/mitigate"
)

// startMonitoring starts the flow collector and export, the Prometheus
// endpoint and the remote API as configured. stop ends them in reverse
// order, the flow collector last (it exports the flows still live).
func (d *Daemon) startMonitoring(ctx context.Context) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	sf, err := d.startFlows(ctx)
	if err != nil {
		return nil, err
	}
	stops = append(stops, sf)
	if d.cfg.MetricsListen != "" {
		sm, err := d.startMetrics(ctx, d.cfg.MetricsListen)
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, sm)
	}
	if d.cfg.RemoteAPI.Listen != "" {
		sr, err := d.startRemoteAPI(ctx)
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, sr)
	}
	return stop, nil
}

// startMetrics serves /metrics on addr.
func (d *Daemon) startMetrics(ctx context.Context, addr string) (func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&metrics{d: d})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: nil, Timeout: 10 * time.Second}))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server", "err", err)
		}
	}()
	d.log.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}

// startRemoteAPI serves the API on TCP with TLS and a token.
func (d *Daemon) startRemoteAPI(ctx context.Context) (func(), error) {
	r := d.cfg.RemoteAPI
	token, err := api.EnsureToken(r.TokenFile)
	if err != nil {
		return nil, err
	}
	certFile := r.CertFile
	if certFile == "" {
		certFile = r.TokenFile + ".pem"
	}
	cert, err := api.LoadOrCreateCert(certFile)
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", r.Listen)
	if err != nil {
		return nil, fmt.Errorf("remote API listen %s: %w", r.Listen, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := api.ServeRemote(sctx, ln, cert, token, d.handle, d.log); err != nil {
			d.log.Error("remote API", "err", err)
		}
	}()
	d.log.Info("serving the remote API", "addr", "tls://"+ln.Addr().String(), "pin", api.Fingerprint(cert), "cert", certFile)
	return func() { cancel(); <-done }, nil
}

// metrics is the Prometheus collector: per-INS and per-uplink counters
// read from every INS at scrape time, and the flow collector's counts.
type metrics struct{ d *Daemon }

var (
	labelsINS    = []string{"ins"}
	labelsUplink = []string{"ins", "uplink", "direction"}
	mUp          = prometheus.NewDesc("mpshim_ins_up", "1 if the INS answered the scrape, 0 if not.", labelsINS, nil)
	mSockets     = prometheus.NewDesc("mpshim_ins_sockets", "Sockets the INS holds.", labelsINS, nil)
	mConns       = prometheus.NewDesc("mpshim_ins_connections", "Connected stream sockets of the INS.", labelsINS, nil)
	mRSS         = prometheus.NewDesc("mpshim_ins_rss_bytes", "Resident memory of the INS process.", labelsINS, nil)
	mPackets     = prometheus.NewDesc("mpshim_uplink_packets_total", "Packets an INS NIC received (rx) or sent (tx) on an uplink.", labelsUplink, nil)
	mBytes       = prometheus.NewDesc("mpshim_uplink_bytes_total", "Bytes an INS NIC received (rx) or sent (tx) on an uplink.", labelsUplink, nil)
	mDrops       = prometheus.NewDesc("mpshim_uplink_drops_total", "Frames dropped on an uplink: rx by the kernel or as malformed, tx for a full queue.", labelsUplink, nil)
	mFlows       = prometheus.NewDesc("mpshim_flows", "Live flows per INS and uplink.", []string{"ins", "uplink"}, nil)
	mFlowsNew    = prometheus.NewDesc("mpshim_flows_created_total", "Flows the INS flow table created.", labelsINS, nil)
	mFlowsEvict  = prometheus.NewDesc("mpshim_flows_evicted_total", "Flows evicted from a full INS flow table.", labelsINS, nil)
	mFlowsLost   = prometheus.NewDesc("mpshim_flow_records_lost_total", "Ended-flow records an INS dropped before the daemon collected them.", labelsINS, nil)
	mIPFIXMsgs   = prometheus.NewDesc("mpshim_ipfix_messages_total", "IPFIX messages sent (counted per collector).", nil, nil)
	mIPFIXRecs   = prometheus.NewDesc("mpshim_ipfix_records_total", "Flow records exported in IPFIX.", nil, nil)
	mIPFIXErrs   = prometheus.NewDesc("mpshim_ipfix_errors_total", "IPFIX messages that could not be sent.", nil, nil)

	labelsRule     = []string{"ins", "rule", "action", "prefix"}
	mRulePackets   = prometheus.NewDesc("mpshim_rule_packets_total", "Packets a mitigation rule (netflow block/limit) matched in an INS.", labelsRule, nil)
	mRuleDrops     = prometheus.NewDesc("mpshim_rule_drops_total", "Packets a mitigation rule dropped in an INS.", labelsRule, nil)
	mRuleDropBytes = prometheus.NewDesc("mpshim_rule_drop_bytes_total", "IP bytes of the packets a mitigation rule dropped in an INS.", labelsRule, nil)
	mRuleVersion   = prometheus.NewDesc("mpshim_rule_set_version", "Version of the mitigation rule set an INS applies.", labelsINS, nil)
	mConnRefused   = prometheus.NewDesc("mpshim_conn_limit_resets_total", "Connections an INS reset for exceeding max-conn-per-src.", labelsINS, nil)
)

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mUp, mSockets, mConns, mRSS, mPackets, mBytes, mDrops, mFlows, mFlowsNew, mFlowsEvict, mFlowsLost, mIPFIXMsgs, mIPFIXRecs, mIPFIXErrs,
		mRulePackets, mRuleDrops, mRuleDropBytes, mRuleVersion, mConnRefused} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	procs := m.d.All()
	stats := make([]ins.Status, len(procs))
	errs := make([]error, len(procs))
	var wg sync.WaitGroup
	for i, b := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			stats[i], errs[i] = b.(*insProc).manage(ctx, ins.ManageRequest{Op: ins.ManageStats})
		}()
	}
	wg.Wait()
	for i, b := range procs {
		id := strconv.Itoa(b.ID())
		if errs[i] != nil {
			gauge(mUp, 0, id)
			continue
		}
		st := stats[i]
		gauge(mUp, 1, id)
		gauge(mSockets, float64(st.Engine.Sockets), id)
		gauge(mConns, float64(st.Engine.Connected), id)
		gauge(mRSS, float64(b.(*insProc).rss()), id)
		for _, u := range st.Uplinks {
			counter(mPackets, u.RxPackets, id, u.Name, "rx")
			counter(mPackets, u.TxPackets, id, u.Name, "tx")
			counter(mBytes, u.RxBytes, id, u.Name, "rx")
			counter(mBytes, u.TxBytes, id, u.Name, "tx")
			counter(mDrops, u.RxDrops, id, u.Name, "rx")
			counter(mDrops, u.TxDrops, id, u.Name, "tx")
		}
	}
	m.collectMitigation(gauge, counter)
	m.d.mu.Lock()
	fs := m.d.flows
	m.d.mu.Unlock()
	if fs == nil || fs.cfg.Disable {
		return
	}
	for id, ups := range fs.col.Active() {
		for up, n := range ups {
			gauge(mFlows, float64(n), strconv.Itoa(id), up)
		}
	}
	for id, st := range fs.col.Stats() {
		l := strconv.Itoa(id)
		counter(mFlowsNew, st.Created, l)
		counter(mFlowsEvict, st.Evicted, l)
		counter(mFlowsLost, st.Lost, l)
	}
	if fs.exp != nil {
		msgs, recs, errs := fs.exp.Stats()
		counter(mIPFIXMsgs, msgs)
		counter(mIPFIXRecs, recs)
		counter(mIPFIXErrs, errs)
	}
}

// collectMitigation reads every INS's rule counters (the query `netflow
// rules` makes) and its max-conn-per-src resets.
func (m *metrics) collectMitigation(gauge func(*prometheus.Desc, float64, ...string), counter func(*prometheus.Desc, uint64, ...string)) {
	if m.d.mit == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, r := range m.d.push(ctx, m.d.procs(), mitigate.Request{}) {
		if r.Error != "" {
			continue
		}
		id := strconv.Itoa(r.ID)
		gauge(mRuleVersion, float64(r.Version), id)
		counter(mConnRefused, r.ConnRefused, id)
		for _, st := range r.Rules {
			l := []string{id, strconv.FormatUint(st.ID, 10), string(st.Action), st.Prefix.String()}
			counter(mRulePackets, st.Packets, l...)
			counter(mRuleDrops, st.Drops, l...)
			counter(mRuleDropBytes, st.DropBytes, l...)
		}
	}
}
