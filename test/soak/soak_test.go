// Package soak is the long survival run of `make soak` (not part of `make
// test`): nginx under the shim behind 4 INS, 10,000 wrk connections, an INS
// killed every minute and the daemon killed and restarted twice, with the
// app's descriptors and the INS's and daemon's memory checked after every
// phase.
//
// Memory is read at rest: after a phase's wrk ended, once the INS hold no
// connection and the daemon's flow collector has let the phase's ended
// flows go (it shows them for collector.DefaultKeepEnded, as TIME_WAIT
// holds a closed connection), with `isolator ls --gc`, which has every
// process collect garbage and return what it freed first. It is compared
// with the same reading after two warm-up phases (see warmups for why
// two). MPSHIM_SOAK_DIAG=DIR keeps what each reading is made of.
package soak

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/netflow/collector"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// Soak shape: phases of phaseLen, each with a wrk per INS address
// (conns/nINS connections each); the event of a phase happens eventAt
// into it.
const (
	nINS    = 4
	eventAt = 20 * time.Second
	settle  = 8 * time.Second
	// quietLimit bounds the wait for the INS to hold no connection
	// after a phase, before the sample (TIME_WAIT is not a connection).
	quietLimit = 60 * time.Second
	// fdGrowth bounds nginx's descriptors after a phase over the base,
	// in percent, and memGrowth the RSS of the daemon and of each INS.
	// Both are Go programs whose heap stays grown for minutes after a
	// load peak (the scavenger returns it slowly), so RSS is read with
	// `isolator ls --gc`: each collects garbage and returns what it freed
	// first, and RSS is then what is live.
	fdGrowth  = 5
	memGrowth = 5
	// fdSlack is the least growth of nginx's descriptors allowed: its
	// few dozen descriptors move by a few (log files, keepers) without
	// any leak, which 5% of them does not cover.
	fdSlack = 8
)

// The soak's size: conns wrk connections in all, phases phases of
// phaseLen after the warm-up. MPSHIM_SOAK_CONNS, MPSHIM_SOAK_PHASES and
// MPSHIM_SOAK_PHASE_SECONDS shorten it for a check; make soak runs the
// defaults.
var (
	conns    = envInt("MPSHIM_SOAK_CONNS", 10000)
	phases   = envInt("MPSHIM_SOAK_PHASES", 10)
	phaseLen = time.Duration(envInt("MPSHIM_SOAK_PHASE_SECONDS", 60)) * time.Second
	// noEvents (MPSHIM_SOAK_EVENTS=none) runs the phases without kills:
	// load alone, for telling its memory apart from the events'.
	noEvents = os.Getenv("MPSHIM_SOAK_EVENTS") == "none"
)

// diagDir, from MPSHIM_SOAK_DIAG, is where each sample writes what the
// memory figures are made of: every process's /proc status and
// smaps_rollup, and heap profiles of the daemon and every INS (binary,
// for go tool pprof -base, and text with the runtime's statistics).
var diagDir = os.Getenv("MPSHIM_SOAK_DIAG")

// diagPprof is the daemon's profile address when diagDir is set.
const diagPprof = "127.0.0.1:6391"

func envInt(key string, def int) int {
	v, err := strconv.Atoi(os.Getenv(key))
	if err != nil || v <= 0 {
		return def
	}
	return v
}

// diag writes the sample's memory details under diagDir/NAME/.
func diag(t *testing.T, tp *topo.Topology, iso *harness.Isolator, name string, infos []api.INSInfo) {
	t.Helper()
	dir := filepath.Join(diagDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("diag: %v", err)
		return
	}
	procs := map[string]int{"daemon": iso.PID()}
	urls := map[string]string{"daemon": "/debug/pprof/heap"}
	for _, in := range infos {
		k := fmt.Sprintf("ins%d", in.ID)
		procs[k], urls[k] = in.PID, fmt.Sprintf("/debug/ins/%d/heap", in.ID)
	}
	for k, pid := range procs {
		for _, f := range []string{"status", "smaps_rollup", "maps"} {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
			_ = os.WriteFile(filepath.Join(dir, k+"."+f), b, 0o644)
		}
		for suffix, q := range map[string]string{".heap": "", ".heap.txt": "?debug=1"} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			out, err := tp.GW.Command(ctx, "curl", "-sf", "-o", filepath.Join(dir, k+suffix), "http://"+diagPprof+urls[k]+q).CombinedOutput()
			cancel()
			if err != nil {
				t.Logf("diag %s %s: %v %s", name, k, err, out)
			}
		}
	}
}

// warmups is the number of phases without an event before the base is
// taken. A Go process's memory after its first minute of load is not yet
// its memory after the next ones: the first phases fault in code an idle
// process never ran (the INS's RssFile grows by about 130 KiB), grow the
// stacks of the netstack's and the engine's goroutines (+0.25 MB) and leave
// heap spans that long-lived objects allocated under load keep in use.
// Measured (MPSHIM_SOAK_DIAG, 4,000 connections, 40 s phases): the INS's
// RSS grew by 1.0–1.7 MB from the first warm-up phase to the second. The
// issue asks for memory "back within 5% after each phase": back to the
// state of a process that has served the load, so the base is the state
// after two warm-up phases. It does not yet hold for the INS: at 6,000 and
// 10,000 connections their RSS ends phases 5–11% over that base while
// their live heap stays at 4–6 MB; what grows is heap in use beyond the
// live heap (spans kept by a few live objects), 1–4 MB (docs/design.md,
// "Survival").
const warmups = 2

// daemonPhases are the phases whose event is a daemon kill -9 and restart
// (1 s later); every other phase kills one INS.
var daemonPhases = map[int]bool{3: true, 7: true}

type sample struct {
	appFDs    int
	daemonRSS int            // KiB
	insRSS    map[int]uint64 // bytes, by INS id
	insTCP    map[int]map[string]int
}

func take(t *testing.T, tp *topo.Topology, iso *harness.Isolator, n *harness.Nginx, name string) sample {
	t.Helper()
	s := sample{insRSS: map[int]uint64{}, insTCP: map[int]map[string]int{}}
	for _, pid := range n.Procs() {
		s.appFDs += harness.FDs(pid)
	}
	infos, err := iso.ListGC()
	s.daemonRSS = harness.RSSKiB(iso.PID())
	if err != nil {
		t.Fatalf("isolator ls: %v", err)
	}
	for _, in := range infos {
		s.insRSS[in.ID] = in.RSS
		s.insTCP[in.ID] = in.TCP
	}
	if diagDir != "" {
		diag(t, tp, iso, name, infos)
	}
	return s
}

// quiet waits up to limit for every INS to hold no connection; it logs
// what is left when the limit passes.
func quiet(t *testing.T, iso *harness.Isolator, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		infos, err := iso.List()
		left := 0
		for _, in := range infos {
			left += in.Connections
		}
		if err == nil && left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("after %v the INS still hold %d connections (%v)", limit, left, err)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func within(after, base, pct int64) bool { return after <= base+base*pct/100 }

// errs are the socket errors that mean a connection failed: wrk's connect,
// read and write errors. Its timeouts (no response within 30 s) are counted
// apart: on a loaded machine 10,000 connections wait their turn.
func errs(r harness.WrkResult) int { return r.Connect + r.Read + r.Write }

func TestSoak(t *testing.T) {
	if os.Getenv("MPSHIM_SOAK") == "" {
		t.Skip("the soak runs 20 minutes: make soak (MPSHIM_SOAK=1)")
	}
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/wrk", "/usr/bin/curl")
	tp := topo.New(t, topo.Config{Uplinks: 1})
	args := []string{"--allow-uid", "0", "--allow-uid", "33", "--socket-group", "www-data", "--socket-mode", "0660"}
	if diagDir != "" {
		args = append(args, "--pprof", diagPprof)
	}
	iso := harness.StartIsolator(t, tp, harness.Options{INS: nINS, Args: args})
	n := harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso,
		Files: harness.RandomFiles(map[string]int{"1k.bin": 1 << 10}),
		Config: func(dir, root string) string {
			return fmt.Sprintf(`user www-data www-data;
worker_processes 2;
worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http {
    access_log off;
    keepalive_timeout 300;
    keepalive_requests 100000000;
    server {
        listen 80 backlog=4096;
        root %s;
    }
}
`, root)
		},
	})
	infos, err := iso.List()
	if err != nil || len(infos) != nINS {
		t.Fatalf("isolator ls: %v %v", infos, err)
	}
	addrs := map[int]string{}
	for _, in := range infos {
		addrs[in.ID] = strings.Split(in.Uplinks[0].Addr4, "/")[0]
	}
	master, workers := n.MasterPID(), n.Workers()

	run := func(phase int, event func()) map[int]harness.WrkResult {
		procs := map[int]*topo.Proc{}
		for id, a := range addrs {
			p, err := tp.WAN.Start(context.Background(), "wrk", "-t", "1", "-c", strconv.Itoa(conns/nINS),
				"--timeout", "30s", "-d", fmt.Sprintf("%ds", int((phaseLen-settle).Seconds())), "http://"+a+"/1k.bin")
			if err != nil {
				t.Fatal(err)
			}
			procs[id] = p
		}
		if event != nil {
			time.Sleep(eventAt)
			event()
		}
		out := map[int]harness.WrkResult{}
		for id, p := range procs {
			select {
			case <-p.Done():
			case <-time.After(2 * phaseLen):
				p.Stop()
				t.Fatalf("phase %d: wrk against INS %d did not end", phase, id)
			}
			r, err := harness.ParseWrk(p.Output())
			if err != nil {
				t.Fatalf("phase %d: %v\n%s", phase, err, p.Output())
			}
			out[id] = r
		}
		// Samples compare a pool at rest: the connections wrk left
		// (a timed-out one is closed late) end before the reading.
		time.Sleep(settle)
		quiet(t, iso, quietLimit)
		// The daemon's flow collector shows each ended flow for
		// KeepEnded after the INS reported it (a poll a second), as
		// TIME_WAIT holds a closed connection: the sample comes once
		// those of the phase have expired, which is the daemon at rest.
		time.Sleep(collector.DefaultKeepEnded + 2*time.Second)
		return out
	}

	if diagDir != "" {
		take(t, tp, iso, n, "fresh")
	}
	// Warm-up: warmups phases without an event; the state after the last
	// is the base of the descriptor and memory checks (see warmups).
	var base sample
	for w := 1; w <= warmups; w++ {
		res := run(0, nil)
		for id, r := range res {
			t.Logf("warm-up %d, INS %d: %d responses, %d errors, %d timeouts", w, id, r.Requests, errs(r), r.Timeout)
			if errs(r) != 0 {
				t.Errorf("warm-up %d, INS %d: %d socket errors\n%s", w, id, errs(r), r.Output)
			}
		}
		base = take(t, tp, iso, n, fmt.Sprintf("warmup%d", w))
		t.Logf("after warm-up %d: nginx fds %d, daemon RSS %d KiB, INS RSS %v, TCP endpoints %v", w, base.appFDs, base.daemonRSS, base.insRSS, base.insTCP)
	}

	for phase := 1; phase <= phases; phase++ {
		victim := 0
		var event func()
		desc := ""
		var before []api.INSInfo
		if noEvents {
			desc = "no event"
		} else if daemonPhases[phase] {
			desc = "daemon kill -9, restart after 1 s"
			before, _ = iso.List()
			event = func() {
				iso.Kill(t)
				time.Sleep(time.Second)
				iso.Restart(t)
			}
		} else {
			infos, _ := iso.List()
			victim = infos[phase%len(infos)].ID
			pid := infos[phase%len(infos)].PID
			desc = fmt.Sprintf("kill -9 INS %d", victim)
			event = func() { syscall.Kill(pid, syscall.SIGKILL) }
		}
		res := run(phase, event)
		after := take(t, tp, iso, n, fmt.Sprintf("phase%d", phase))
		var summary []string
		for id, r := range res {
			summary = append(summary, fmt.Sprintf("INS %d: %d errors %d timeouts %d responses", id, errs(r), r.Timeout, r.Requests))
			switch {
			case !noEvents && daemonPhases[phase] && (errs(r) != 0 || r.Requests == 0):
				// The INS outlive the daemon and the restarted one
				// adopts them (docs/design.md, "Survival"): no
				// connection is lost.
				t.Errorf("phase %d (%s): INS %d: %d socket errors, %d responses", phase, desc, id, errs(r), r.Requests)
			case id != victim && errs(r) != 0:
				t.Errorf("phase %d (%s): %d socket errors on INS %d, which was not killed", phase, desc, errs(r), id)
			}
		}
		if !noEvents && daemonPhases[phase] {
			now, _ := iso.List()
			if fmt.Sprint(insPIDs(now)) != fmt.Sprint(insPIDs(before)) {
				t.Errorf("phase %d (%s): INS pids %v after the restart, were %v (not adopted)", phase, desc, insPIDs(now), insPIDs(before))
			}
		}
		t.Logf("phase %d (%s): %s; nginx fds %d (base %d), daemon RSS %d KiB (base %d), INS RSS %v, TCP endpoints %v",
			phase, desc, strings.Join(summary, ", "), after.appFDs, base.appFDs, after.daemonRSS, base.daemonRSS, after.insRSS, after.insTCP)
		if !within(int64(after.appFDs), int64(base.appFDs), fdGrowth) && after.appFDs > base.appFDs+fdSlack {
			t.Errorf("phase %d: nginx holds %d descriptors, base %d (+%d%% allowed)", phase, after.appFDs, base.appFDs, fdGrowth)
		}
		// A restarted daemon is a new process, still warming up under
		// the reconnecting load: its RSS is compared from the next
		// phase on.
		if (noEvents || !daemonPhases[phase]) && !within(int64(after.daemonRSS), int64(base.daemonRSS), memGrowth) {
			t.Errorf("phase %d: daemon RSS %d KiB, base %d KiB", phase, after.daemonRSS, base.daemonRSS)
		}
		for id, rss := range after.insRSS {
			if b, ok := base.insRSS[id]; ok && !within(int64(rss), int64(b), memGrowth) {
				t.Errorf("phase %d: INS %d RSS %d KiB, base %d KiB", phase, id, rss>>10, b>>10)
			}
		}
		if n.MasterPID() != master || fmt.Sprint(n.Workers()) != fmt.Sprint(workers) {
			t.Errorf("phase %d: nginx processes changed", phase)
		}
	}
}

// insPIDs maps each INS id to its pid.
func insPIDs(infos []api.INSInfo) map[int]int {
	m := map[int]int{}
	for _, in := range infos {
		m[in.ID] = in.PID
	}
	return m
}
