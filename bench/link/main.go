// Command link measures the INS link-layer variants against each other:
// the AF_PACKET backend without and with host GSO (the default), and the
// AF_XDP backend (which receives through AF_XDP and sends through AF_PACKET)
// without and with GSO.
//
// It builds a test topology with one uplink and starts one isolator daemon
// per variant in the gw namespace, each with one INS on its own address of
// the uplink. In the app namespace (loopback only) every daemon serves a Go
// net/http server through mpnet, and a fresh one-test iperf3 server under
// libmpshim.so per iperf3 run. From wan it then runs, round after round
// with the variants in rotating order:
//
//	in       iperf3 -c INS         bulk TCP received by the INS (Mbit/s)
//	out      iperf3 -c INS -R      bulk TCP sent by the INS (Mbit/s)
//	rps      wrk -t2 -c32          small HTTP requests on keep-alive (req/s)
//
// and, for each run, the CPU time the INS process used per GB moved or per
// request (in-cpu, out-cpu, rps-cpu): the machine's other load moves rates
// a lot but CPU time per unit of work much less. It prints the median of
// each figure per variant with its ratio to the first variant, and the load
// average before and after.
//
//	make build && go run ./bench/link [-rounds 5] [-t 5s] [-only packet,xdp] [-keep]
package main

import (
	"github.com/mpshim/mpshim/bench/internal/report"

	"github.com/mpshim/mpshim/internal/procstat"

	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/mpnet"
	"github.com/mpshim/mpshim/test/topo"
)

// variant is one link configuration under test.
type variant struct {
	name    string
	options string // appended to the --uplink flag
}

var variants = []variant{
	{"packet", "backend=packet,gso=off"},
	{"packet+gso", "backend=packet,gso=on"},
	{"xdp", "backend=xdp,gso=off"},
	{"xdp+gso", "backend=xdp,gso=on"},
}

// metrics are the figures measured per variant: rates (higher is better)
// and the INS's CPU time per unit of work (lower is better; less
// sensitive than rates to other load on the machine).
var metrics = []struct{ key, unit, format string }{
	{"in", "Mbit/s", "%7.0f"},
	{"out", "Mbit/s", "%7.0f"},
	{"rps", "req/s", "%7.0f"},
	{"in-cpu", "ms/GB", "%7.0f"},
	{"out-cpu", "ms/GB", "%7.0f"},
	{"rps-cpu", "us/req", "%7.1f"},
}

func main() {
	serve := flag.String("serve-http", "", "internal: serve HTTP on this address through mpnet")
	bin := flag.String("bin", "bin", "directory of the built binaries")
	rounds := flag.Int("rounds", 5, "rounds; each measures every variant once")
	dur := flag.Duration("t", 5*time.Second, "duration of each iperf3 and wrk run")
	only := flag.String("only", "", "comma-separated variants to run (default all)")
	keep := flag.Bool("keep", false, "keep the directory with the servers' logs")
	flag.Parse()
	if *serve != "" {
		if err := serveHTTP(*serve); err != nil {
			fmt.Fprintln(os.Stderr, "serve-http:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*bin, *rounds, *dur, *only, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "bench/link:", err)
		os.Exit(1)
	}
}

// serveHTTP answers every request with a short body, through the isolator
// named by MPSHIM_SOCKET.
func serveHTTP(addr string) error {
	ln, err := mpnet.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return err
	}
	body := []byte("mpshim\n")
	return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	}))
}

// daemon is one isolator run for a variant, with its servers.
type daemon struct {
	v        variant
	index    int
	addr     string
	http     int
	runs     int // iperf3 servers started so far
	insPID   int
	proc     *topo.Proc
	apiSock  string
	regSock  string
	isolator string
	lib, dir string
	tp       *topo.Topology
}

// startLogged starts c in its own process group with its output in the
// file logPath; stop kills the group and waits.
func startLogged(c *exec.Cmd, logPath string) (stop func(), err error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() {
		err := c.Wait()
		fmt.Fprintf(logf, "\nexited: %v\n", err)
		logf.Close()
		close(exited)
	}()
	return func() { _ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL); <-exited }, nil
}

// iperfServer starts a one-test iperf3 server under the shim on a port of
// its own and waits until the INS listens on it. (A long-running iperf3
// server re-creates its listener after each test, and that second listen
// on the same port does not complete under the shim today.)
func (d *daemon) iperfServer(ctx context.Context) (port int, stop func(), err error) {
	d.runs++
	port = 5201 + 1000*d.index + d.runs
	c := d.tp.App.Command(ctx, "iperf3", "-s", "-1", "-p", strconv.Itoa(port))
	c.Env = append(os.Environ(), "LD_PRELOAD="+d.lib, "MPSHIM_SOCKET="+d.regSock)
	if stop, err = startLogged(c, filepath.Join(d.dir, fmt.Sprintf("iperf3-%d-%d.log", d.index, port))); err != nil {
		return 0, nil, err
	}
	want := fmt.Sprintf("addr=[::]:%d ", port)
	if err := waitFor(20*time.Second, func() error {
		if !strings.Contains(d.proc.Output(), want) {
			return fmt.Errorf("%s: iperf3 server on port %d not listening", d.v.name, port)
		}
		return nil
	}); err != nil {
		stop()
		return 0, nil, err
	}
	return port, stop, nil
}

func run(binDir string, rounds int, dur time.Duration, only string, keep bool) error {
	binDir, _ = filepath.Abs(binDir)
	isolator, lib := filepath.Join(binDir, "isolator"), filepath.Join(binDir, "libmpshim.so")
	for _, p := range []string{isolator, lib} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s missing (make build): %w", p, err)
		}
	}
	for _, p := range []string{"iperf3", "wrk", "ip"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s missing (scripts/deps.sh bench installs it): %w", p, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	vs := variants
	if only != "" {
		vs = nil
		for _, n := range strings.Split(only, ",") {
			i := slices.IndexFunc(variants, func(v variant) bool { return v.name == n })
			if i < 0 {
				return fmt.Errorf("unknown variant %q", n)
			}
			vs = append(vs, variants[i])
		}
	}
	slog.SetLogLoggerLevel(slog.LevelWarn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tp, err := topo.Build(ctx, topo.Config{Uplinks: 1, NoIPv6: true})
	if err != nil {
		return err
	}
	defer tp.Close()
	dir, err := os.MkdirTemp("", "mpshim-bench-link-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Println("logs in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	os.Chmod(dir, 0o755)
	up := tp.Uplinks[0]

	var ds []*daemon
	for i, v := range vs {
		d := &daemon{v: v, index: i, addr: up.HostAddr4(20 * i).String(), http: 8080 + i, isolator: isolator,
			apiSock: filepath.Join(dir, fmt.Sprintf("api%d.sock", i)), regSock: filepath.Join(dir, fmt.Sprintf("iso%d.sock", i))}
		state := filepath.Join(dir, fmt.Sprintf("state%d", i))
		args := []string{"run", "--api", d.apiSock, "--socket", d.regSock, "--state-dir", state, "--ins", "1",
			"--uplink", fmt.Sprintf("up0=%s,pool4=%s/24,gw4=%s,%s", up.GWIf, d.addr, up.WANAddr4, v.options)}
		if d.proc, err = tp.GW.Start(ctx, isolator, args...); err != nil {
			return err
		}
		defer d.proc.Stop()
		if err := d.waitUp(); err != nil {
			return err
		}
		d.lib, d.dir, d.tp = lib, dir, tp
		hs := tp.App.Command(ctx, self, "-serve-http", fmt.Sprintf(":%d", d.http))
		hs.Env = append(os.Environ(), "MPSHIM_SOCKET="+d.regSock)
		stop, err := startLogged(hs, filepath.Join(dir, fmt.Sprintf("http%d.log", i)))
		if err != nil {
			return err
		}
		defer stop()
		ds = append(ds, d)
	}
	// Servers are up once a request succeeds.
	for _, d := range ds {
		if err := waitFor(30*time.Second, func() error {
			_, err := tp.WAN.Run(ctx, "wrk", "-t1", "-c1", "-d1s", d.url())
			return err
		}); err != nil {
			return fmt.Errorf("%s: HTTP server did not answer: %w", d.v.name, err)
		}
	}

	fmt.Printf("bench/link: %d variants x %d rounds, %v per run, 1 uplink (veth, user-space relay), 1 INS per variant, %d CPUs\n",
		len(ds), rounds, dur, runtime.NumCPU())
	load0 := report.LoadAvg()
	res := map[string]map[string][]float64{}
	for _, d := range ds {
		res[d.v.name] = map[string][]float64{}
	}
	secs := strconv.Itoa(int(dur.Seconds()))
	for r := 0; r < rounds; r++ {
		for k := range ds {
			d := ds[(r+k)%len(ds)]
			m := res[d.v.name]
			for _, dir := range []string{"in", "out"} {
				cpu0 := d.insCPU()
				rate, bytes, err := iperf(ctx, tp, d, secs, dir == "out")
				if err != nil {
					return d.failed(err)
				}
				m[dir] = append(m[dir], rate)
				m[dir+"-cpu"] = append(m[dir+"-cpu"], (d.insCPU()-cpu0).Seconds()*1e3/(float64(bytes)/1e9))
			}
			cpu0 := d.insCPU()
			rps, reqs, err := wrk(ctx, tp, d, secs)
			if err != nil {
				return d.failed(err)
			}
			m["rps"] = append(m["rps"], rps)
			m["rps-cpu"] = append(m["rps-cpu"], (d.insCPU()-cpu0).Seconds()*1e6/float64(reqs))
			fmt.Printf("  round %d %-11s", r+1, d.v.name)
			for _, mt := range metrics {
				fmt.Printf("  %s "+mt.format, mt.key, m[mt.key][len(m[mt.key])-1])
			}
			fmt.Println()
		}
	}
	load1 := report.LoadAvg()

	fmt.Printf("\nmedians (load average %s before, %s after):\n", load0, load1)
	fmt.Printf("%-12s", "variant")
	for _, m := range metrics {
		fmt.Printf(" %18s", m.key+" ("+m.unit+")")
	}
	fmt.Println()
	base := res[ds[0].v.name]
	for _, d := range ds {
		fmt.Printf("%-12s", d.v.name)
		for _, m := range metrics {
			v := report.Median(res[d.v.name][m.key])
			fmt.Printf(" "+m.format+" (x%4.2f)", v, v/report.Median(base[m.key]))
		}
		fmt.Println()
	}
	fmt.Printf("(ratios are to %s; for the -cpu figures lower is better)\n", ds[0].v.name)
	return nil
}

// failed adds the daemon's log to err.
func (d *daemon) failed(err error) error {
	return fmt.Errorf("%w\nisolator log (%s):\n%s", err, d.v.name, d.proc.Output())
}

func (d *daemon) url() string { return fmt.Sprintf("http://%s:%d/", d.addr, d.http) }

// waitUp waits until the daemon lists its INS.
func (d *daemon) waitUp() error {
	return waitFor(60*time.Second, func() error {
		select {
		case <-d.proc.Done():
			return fmt.Errorf("isolator exited:\n%s", d.proc.Output())
		default:
		}
		out, err := exec.Command(d.isolator, "--api", d.apiSock, "ls", "-o", "json").Output()
		if err != nil {
			return err
		}
		var infos []api.INSInfo
		if err := json.Unmarshal(out, &infos); err != nil || len(infos) != 1 {
			return fmt.Errorf("isolator ls: %v %s", err, out)
		}
		d.insPID = infos[0].PID
		return nil
	})
}

func waitFor(limit time.Duration, f func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// iperf runs one iperf3 client from wan against a fresh server on d's INS
// and returns the received rate in Mbit/s; reverse makes the INS the
// sender.
func iperf(ctx context.Context, tp *topo.Topology, d *daemon, secs string, reverse bool) (mbits float64, bytes int64, err error) {
	port, stop, err := d.iperfServer(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer stop()
	args := []string{"-c", d.addr, "-p", strconv.Itoa(port), "-t", secs, "-J"}
	if reverse {
		args = append(args, "-R")
	}
	out, err := tp.WAN.Command(ctx, "iperf3", args...).Output()
	var r struct {
		End struct {
			SumReceived struct {
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &r); err != nil || jerr != nil || r.Error != "" || r.End.SumReceived.Bytes <= 0 {
		return 0, 0, fmt.Errorf("%s: iperf3 %s: %v %v %s", d.v.name, strings.Join(args, " "), err, jerr, r.Error)
	}
	return r.End.SumReceived.BitsPerSecond / 1e6, r.End.SumReceived.Bytes, nil
}

var (
	reqPerSec = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reqTotal  = regexp.MustCompile(`([0-9]+) requests in`)
)

// wrk runs wrk from wan against d's HTTP server and returns requests/s and
// the number of requests.
func wrk(ctx context.Context, tp *topo.Topology, d *daemon, secs string) (float64, int64, error) {
	out, err := tp.WAN.Run(ctx, "wrk", "-t2", "-c32", "-d"+secs+"s", d.url())
	rate, total := reqPerSec.FindStringSubmatch(out), reqTotal.FindStringSubmatch(out)
	if err != nil || rate == nil || total == nil {
		return 0, 0, fmt.Errorf("%s: wrk: %v\n%s", d.v.name, err, out)
	}
	if strings.Contains(out, "Non-2xx") || strings.Contains(out, "Socket errors") {
		return 0, 0, fmt.Errorf("%s: wrk saw errors:\n%s", d.v.name, out)
	}
	r, _ := strconv.ParseFloat(rate[1], 64)
	n, _ := strconv.ParseInt(total[1], 10, 64)
	if n <= 0 {
		return 0, 0, fmt.Errorf("%s: wrk made no requests:\n%s", d.v.name, out)
	}
	return r, n, nil
}

// insCPU is the CPU time (user and system, all threads) the INS has used.
func (d *daemon) insCPU() time.Duration {
	t, _ := procstat.CPUTime(d.insPID)
	return t
}
