package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/topo"
)

// wrkThreads is the number of wrk threads: one per core of the test
// machine.
const wrkThreads = 2

// wrkQuota is a wrk script that stops each thread once it has counted its
// share of responses (args[1]) and then appends a line to a file (args[2]),
// so that the caller can end the run (wrk itself only stops on a duration
// or SIGINT, and prints its statistics in both cases).
const wrkQuota = `local quota, n, flag = 0, 0, nil
function init(args)
  quota = tonumber(args[1])
  flag = args[2]
end
function response(status, headers, body)
  n = n + 1
  if n == quota then
    local f = io.open(flag, "a")
    f:write("done\n")
    f:close()
    wrk.thread:stop()
  end
end
`

// WrkResult is what wrk reported for one run.
type WrkResult struct {
	// Requests is the number of complete responses wrk counted.
	Requests int
	// Connect, Read, Write and Timeout are wrk's socket errors.
	Connect, Read, Write, Timeout int
	// Non2xx counts responses with a status outside 2xx and 3xx.
	Non2xx int
	// Elapsed is the run's duration as wrk measured it.
	Elapsed time.Duration
	// Output is wrk's full output.
	Output string
}

// SocketErrors is the sum of wrk's socket error counters.
func (r WrkResult) SocketErrors() int { return r.Connect + r.Read + r.Write + r.Timeout }

// RPS is the rate of complete responses.
func (r WrkResult) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

var (
	wrkRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)\b`)
	wrkSockErrs = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// ParseWrk reads wrk's summary. The socket error and non-2xx lines appear
// only when their counts are not zero.
func ParseWrk(out string) (WrkResult, error) {
	r := WrkResult{Output: out}
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output has no request count")
	}
	r.Requests, _ = strconv.Atoi(m[1])
	v, _ := strconv.ParseFloat(m[2], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour}[m[3]]
	r.Elapsed = time.Duration(v * float64(unit))
	if m := wrkSockErrs.FindStringSubmatch(out); m != nil {
		r.Connect, _ = strconv.Atoi(m[1])
		r.Read, _ = strconv.Atoi(m[2])
		r.Write, _ = strconv.Atoi(m[3])
		r.Timeout, _ = strconv.Atoi(m[4])
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.Atoi(m[1])
	}
	return r, nil
}

// Wrk runs wrk in ns against url over conns keep-alive connections until
// it has counted at least n responses (each of its threads stops at its
// share; in-flight requests of a stopped thread are not counted), within
// limit. wrk's request timeout is 30 s, so a slow response under a loaded
// machine is a slow response, not an error.
func Wrk(t testing.TB, ns *topo.NS, url string, n, conns int, limit time.Duration) WrkResult {
	t.Helper()
	dir := t.TempDir()
	script, flag := filepath.Join(dir, "quota.lua"), filepath.Join(dir, "done")
	if err := os.WriteFile(script, []byte(wrkQuota), 0o644); err != nil {
		t.Fatal(err)
	}
	quota := (n + wrkThreads - 1) / wrkThreads
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	// The duration only bounds the run; the quota ends it.
	p, err := ns.Start(ctx, "wrk", "-t", strconv.Itoa(wrkThreads), "-c", strconv.Itoa(conns),
		"--timeout", "30s", "-d", strconv.Itoa(int(limit.Seconds())+60)+"s",
		"-s", script, url, "--", strconv.Itoa(quota), flag)
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-p.Done():
			t.Fatalf("wrk ended before its %d requests: %v\n%s", n, p.Wait(), p.Output())
		case <-ctx.Done():
			p.Stop()
			t.Fatalf("wrk did not count %d responses from %s within %v\n%s", n, url, limit, p.Output())
		case <-tick.C:
			b, _ := os.ReadFile(flag)
			if strings.Count(string(b), "done\n") == wrkThreads {
				break wait
			}
		}
	}
	syscall.Kill(p.PID(), syscall.SIGINT)
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		p.Stop()
		t.Fatalf("wrk did not exit after SIGINT\n%s", p.Output())
	}
	r, err := ParseWrk(p.Output())
	if err != nil {
		t.Fatalf("%v:\n%s", err, p.Output())
	}
	return r
}

// FDs is the number of open descriptors of pid (0 if it is gone).
func FDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

var vmRSS = regexp.MustCompile(`VmRSS:\s+(\d+) kB`)

// RSSKiB is the resident set size of pid in KiB (0 if it is gone).
func RSSKiB(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	m := vmRSS.FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// Load describes a load run against a server under the shim.
type Load struct {
	// NS is where wrk runs; URL what it fetches.
	NS  *topo.NS
	URL string
	// Requests is the least number of responses the measured run counts;
	// Warmup that of the run before it, after which the first snapshot is
	// taken. Conns is wrk's number of connections.
	Requests, Warmup, Conns int
	// Pids lists the app's processes whose descriptors and memory are
	// checked.
	Pids func() []int
	// Served reads the server's access log: the requests it answered so
	// far and how many of them had a status outside 2xx.
	Served func() (total, non2xx int)
	// Limit bounds each wrk run.
	Limit time.Duration
	// Growth bounds what the app and the isolator may gain over the
	// measured run; zero means DefaultLimits.
	Growth Limits
}

// RunLoad runs l: a warm-up, a snapshot, the measured run, and a snapshot
// once the INS have released the run's sockets. It fails t for any socket
// error or non-2xx response wrk saw, for fewer responses than asked, for a
// count the server's access log does not bear out (it may have answered
// at most one request per connection that wrk stopped waiting for), for a
// non-2xx status in the log and for growth beyond l.Growth. It
// returns the measured run.
func (d *Isolator) RunLoad(t testing.TB, l Load) WrkResult {
	t.Helper()
	if l.Limit == 0 {
		l.Limit = 10 * time.Minute
	}
	check := func(what string, r WrkResult, n int) {
		t.Helper()
		if r.SocketErrors() != 0 || r.Non2xx != 0 || r.Requests < n {
			t.Fatalf("%s: wrk counted %d responses (want ≥ %d), socket errors connect %d read %d write %d timeout %d, %d non-2xx\n%s",
				what, r.Requests, n, r.Connect, r.Read, r.Write, r.Timeout, r.Non2xx, r.Output)
		}
	}
	base, err := d.Usage(l.Pids())
	if err != nil {
		t.Fatal(err)
	}
	check("warm-up", Wrk(t, l.NS, l.URL, l.Warmup, l.Conns, l.Limit), l.Warmup)
	before := d.WaitSettled(t, base, l.Pids(), 30*time.Second)
	served0, bad0 := l.Served()
	r := Wrk(t, l.NS, l.URL, l.Requests, l.Conns, l.Limit)
	check("load", r, l.Requests)
	t.Logf("wrk -c %d %s: %d responses in %v (%.0f/s)", l.Conns, l.URL, r.Requests, r.Elapsed.Round(time.Millisecond), r.RPS())
	after := d.WaitSettled(t, before, l.Pids(), 30*time.Second)
	served1, bad1 := l.Served()
	if n := served1 - served0; n < r.Requests || n > r.Requests+l.Conns {
		t.Errorf("the server logged %d requests during the run, wrk counted %d responses over %d connections", n, r.Requests, l.Conns)
	}
	if bad1 != bad0 {
		t.Errorf("the server logged %d responses outside 2xx during the run", bad1-bad0)
	}
	if l.Growth == (Limits{}) {
		l.Growth = DefaultLimits
	}
	CheckUsage(t, before, after, l.Growth)
	return r
}

// StatusLog reads an access log written with the status code alone on each
// line (nginx `log_format … '$status'`, Apache `LogFormat "%>s"`): the
// lines and how many are not a 2xx status.
func StatusLog(path string) (total, non2xx int) {
	b, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		total++
		if !strings.HasPrefix(line, "2") {
			non2xx++
		}
	}
	return total, non2xx
}
