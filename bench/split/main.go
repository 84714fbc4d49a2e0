// Command split benchmarks the split tunnel over three links shaped to
// 100, 50 and 20 Mbit/s with 5, 20 and 40 ms of one-way delay (test/topo):
// curl in site A (the wan namespace) fetches a file from nginx in site B
// (the gw namespace) through the tunnel, over one TCP connection on the
// best link, and over Linux MPTCP with one endpoint per link (Debian's
// mptcpd: mptcpize run curl / nginx). It also fetches through the tunnel
// with 1 % loss on the fastest link, measures the longest stall of a stream
// when the fastest link is cut and when it is black-holed mid-transfer, and
// prints each figure against the goals: tunnel ≥ 0.9 × the sum of
// the link rates and ≥ MPTCP, with loss ≥ 0.8 × without, stalls < 1 s.
// Needs root.
//
//	go run ./bench/split [--size 200] [--runs 1] [--only tunnel|shim] [--bin bin]
//
// --only tunnel measures the tunnel alone, and prints what each path of
// the sending side (B) carried during the run: its share of the link sum
// against its share of the stream, its loss, the frames sent again.
// --only shim measures the acceptance path instead: curl under the shim
// (bin/libmpshim.so) through an isolator daemon and its split gateway.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/mpshim/mpshim/isolator/split/forward"
	"github.com/mpshim/mpshim/isolator/split/seal"
	"github.com/mpshim/mpshim/isolator/split/tunnel"
	"github.com/mpshim/mpshim/test/topo"
)

var shapes = []topo.Shape{
	{RateMbit: 100, Delay: 5 * time.Millisecond},
	{RateMbit: 50, Delay: 20 * time.Millisecond},
	{RateMbit: 20, Delay: 40 * time.Millisecond},
}

const sumMbit = 170.0

func addrB(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 77, byte(i), 2}) }

func main() {
	size := flag.Int("size", 200, "file size in MiB")
	runs := flag.Int("runs", 1, "runs of each measurement (the best counts)")
	only := flag.String("only", "", "\"tunnel\": only the tunnel's goodput, with a breakdown per path; \"shim\": curl under the shim through an isolator daemon and its split gateway")
	bin := flag.String("bin", "bin", "where isolator and libmpshim.so are (--only shim)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process (both ends of the tunnel) to the file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "split bench: cpu profile:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if *only != "" && *only != "tunnel" && *only != "shim" {
		fmt.Fprintf(os.Stderr, "split bench: --only %q: want tunnel or shim\n", *only)
		os.Exit(2)
	}
	if err := run(*size<<20, *runs, *only, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "split bench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

type bench struct {
	tp     *topo.Topology
	dir    string
	sum    string
	procs  []*topo.Proc
	sender *tunnel.Session // B's session: B sends the file
}

func run(size, runs int, only, bin string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root for network namespaces")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	tp, err := topo.Build(ctx, topo.Config{Uplinks: len(shapes), Shape: shapes, NoIPv6: true})
	if err != nil {
		return err
	}
	defer tp.Close()
	dir, err := os.MkdirTemp("", "mpshim-splitbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	b := &bench{tp: tp, dir: dir}
	defer func() {
		for _, p := range b.procs {
			p.Stop()
		}
	}()
	for i, u := range tp.Uplinks {
		if out, err := tp.GW.Run(ctx, "ip", "addr", "add", addrB(i).String()+"/24", "dev", u.GWIf); err != nil {
			return fmt.Errorf("address on B: %v: %s", err, out)
		}
	}
	body := make([]byte, size)
	rand.Read(body)
	s := sha256.Sum256(body)
	b.sum = fmt.Sprintf("%x", s)
	if err := os.WriteFile(filepath.Join(dir, "f"), body, 0o644); err != nil {
		return err
	}
	body = nil
	if only == "shim" {
		bin, err := filepath.Abs(bin)
		if err != nil {
			return err
		}
		fmt.Printf("split tunnel benchmark: %d MiB, curl under the shim on A from nginx behind B, over links of %v Mbit/s (sum %v)\n\n", size>>20, []float64{100, 50, 20}, sumMbit)
		return b.shimOnly(ctx, bin, runs)
	}
	if err := b.nginx(ctx, false); err != nil {
		return err
	}
	fmt.Printf("split tunnel benchmark: %d MiB from nginx in B to curl in A over links of %v Mbit/s (sum %v)\n\n", size>>20, []float64{100, 50, 20}, sumMbit)

	best := func(f func() (float64, error)) (float64, error) {
		var m float64
		for range runs {
			v, err := f()
			if err != nil {
				return 0, err
			}
			m = max(m, v)
		}
		return m, nil
	}
	if only == "tunnel" {
		return b.tunnelOnly(ctx, runs)
	}
	tcp, err := best(func() (float64, error) { return b.curl(ctx, nil, "http://"+addrB(0).String()+":8080/f") })
	if err != nil {
		return fmt.Errorf("tcp over the best link: %w", err)
	}
	local, ma, mb, stop, err := b.tunnel(ctx)
	if err != nil {
		return err
	}
	tun, err := best(func() (float64, error) { return b.curl(ctx, nil, "http://"+local+"/f") })
	if err != nil {
		stop()
		return fmt.Errorf("tunnel: %w", err)
	}
	// Failover: link 0 cut mid-transfer, by carrier and by black hole.
	var stalls [2]time.Duration
	for i, c := range []struct{ cut, heal func() error }{
		{func() error { return tp.SetUplinkDown(0) }, func() error { return tp.SetUplinkUp(0) }},
		{func() error { s := shapes[0]; s.LossPercent = 100; return tp.SetShape(0, s) }, func() error { return tp.SetShape(0, shapes[0]) }},
	} {
		st, err := streamStall(mb, ma, 64<<20, c.cut)
		if herr := c.heal(); herr != nil && err == nil {
			err = herr
		}
		if err != nil {
			stop()
			return fmt.Errorf("failover: %w", err)
		}
		stalls[i] = st
		time.Sleep(2 * time.Second) // the link comes back
	}
	lossy := shapes[0]
	lossy.LossPercent = 1
	if err := tp.SetShape(0, lossy); err != nil {
		stop()
		return err
	}
	tunLoss, err := best(func() (float64, error) { return b.curl(ctx, nil, "http://"+local+"/f") })
	stop()
	if err != nil {
		return fmt.Errorf("tunnel with loss: %w", err)
	}
	if err := tp.SetShape(0, shapes[0]); err != nil {
		return err
	}
	mptcp, mptcpErr := b.mptcp(ctx, best)

	fmt.Printf("%-40s %10s\n", "path", "Mbit/s")
	fmt.Printf("%-40s %10.1f\n", "one TCP connection, best link", tcp)
	if mptcpErr != nil {
		fmt.Printf("%-40s %10s  (%v)\n", "Linux MPTCP, 3 subflows", "-", mptcpErr)
	} else {
		fmt.Printf("%-40s %10.1f\n", "Linux MPTCP, 3 subflows", mptcp)
	}
	fmt.Printf("%-40s %10.1f  (%.2f of the link sum)\n", "split tunnel", tun, tun/sumMbit)
	fmt.Printf("%-40s %10.1f  (%.2f of loss-free)\n", "split tunnel, 1% loss on the 100 Mbit/s link", tunLoss, tunLoss/tun)
	fmt.Println()
	goal := func(name string, ok bool) {
		v := "met"
		if !ok {
			v = "NOT met"
		}
		fmt.Printf("goal %-45s %s\n", name+":", v)
	}
	goal("tunnel ≥ 0.9 × link sum (153 Mbit/s)", tun >= 0.9*sumMbit)
	if mptcpErr == nil {
		goal("tunnel ≥ MPTCP", tun >= mptcp)
	}
	goal("tunnel with 1% loss ≥ 0.8 × loss-free", tunLoss >= 0.8*tun)
	goal(fmt.Sprintf("longest stall, link cut (%v) < 1 s", stalls[0].Round(time.Millisecond)), stalls[0] < time.Second)
	goal(fmt.Sprintf("longest stall, link black-holed (%v) < 1 s", stalls[1].Round(time.Millisecond)), stalls[1] < time.Second)
	return nil
}

// tunnelOnly measures the tunnel's goodput runs times and, per run, what
// each of B's paths carried.
func (b *bench) tunnelOnly(ctx context.Context, runs int) error {
	local, _, _, stop, err := b.tunnel(ctx)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Printf("%-5s %10s %9s %9s  %-50s %s\n", "run", "Mbit/s", "of sum", "B/packet", "per path: Mbit/s (of its link) share loss resent", "retransmits duplicates over-window")
	for r := range runs {
		before, c0 := b.sender.Stats()
		start := time.Now()
		v, err := b.curl(ctx, nil, "http://"+local+"/f")
		if err != nil {
			return fmt.Errorf("tunnel: %w", err)
		}
		secs := time.Since(start).Seconds()
		after, c1 := b.sender.Stats()
		var paths []string
		var total, packets uint64
		for i := range after {
			total += after[i].DataBytes - before[i].DataBytes
			packets += after[i].Packets - before[i].Packets
		}
		for i := range after {
			d := after[i].DataBytes - before[i].DataBytes
			mbit := float64(d) * 8 / secs / 1e6
			lost := after[i].Lost - before[i].Lost
			pk := after[i].Packets - before[i].Packets
			paths = append(paths, fmt.Sprintf("%.1f (%.2f) %.0f%% %.2f%% %d", mbit, mbit/shapes[i].RateMbit,
				100*float64(d)/float64(max(total, 1)), 100*float64(lost)/float64(max(pk, 1)), after[i].Resent-before[i].Resent))
		}
		fmt.Printf("%-5d %10.1f %9.3f %9.0f  %-50s %d %d %d\n", r+1, v, v/sumMbit, float64(total)/float64(max(packets, 1)), strings.Join(paths, " | "),
			c1.Retransmits-c0.Retransmits, c1.Duplicates-c0.Duplicates, c1.OverWindow-c0.OverWindow)
	}
	return nil
}

// nginx starts nginx in B on loopback:8080 and every B address:8080,
// under mptcpize when mptcp is set.
func (b *bench) nginx(ctx context.Context, mptcp bool) error {
	var listen strings.Builder
	listen.WriteString("  listen 127.0.0.1:8080;\n")
	for i := range shapes {
		fmt.Fprintf(&listen, "  listen %s:8080;\n", addrB(i))
	}
	conf := filepath.Join(b.dir, "nginx.conf")
	c := fmt.Sprintf("daemon off;\npid %[1]s/nginx.pid;\nerror_log %[1]s/error.log;\nworker_processes 1;\nevents { worker_connections 64; }\nhttp {\n access_log off;\n sendfile on;\n server {\n%[2]s  root %[1]s;\n }\n}\n", b.dir, listen.String())
	if err := os.WriteFile(conf, []byte(c), 0o644); err != nil {
		return err
	}
	args := []string{"nginx", "-c", conf}
	if mptcp {
		args = append([]string{"mptcpize", "run"}, args...)
	}
	p, err := b.tp.GW.Start(ctx, args[0], args[1:]...)
	if err != nil {
		return err
	}
	b.procs = append(b.procs, p)
	// Wait until it listens.
	for range 100 {
		if out, err := b.tp.GW.Run(ctx, "ss", "-Hltn", "sport = :8080"); err == nil && strings.Contains(out, "8080") {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nginx did not start: %s", p.Output())
}

// curl fetches url in A (prefixed by wrap) and returns the goodput after
// checking the body.
func (b *bench) curl(ctx context.Context, wrap []string, url string) (float64, error) {
	out := filepath.Join(b.dir, "body")
	defer os.Remove(out)
	args := append(append([]string{}, wrap...), "curl", "-sS", "--fail", "-o", out, "-w", "%{speed_download}", url)
	res, err := b.tp.WAN.Run(ctx, args[0], args[1:]...)
	if err != nil {
		return 0, fmt.Errorf("curl: %v: %s", err, res)
	}
	bps, err := strconv.ParseFloat(strings.TrimSpace(res), 64)
	if err != nil {
		return 0, fmt.Errorf("curl speed %q: %w", res, err)
	}
	f, err := os.Open(out)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	if got := fmt.Sprintf("%x", h.Sum(nil)); got != b.sum {
		return 0, fmt.Errorf("sha256 %s, want %s", got, b.sum)
	}
	return bps * 8 / 1e6, nil
}

// tunnel starts the split tunnel between A and B with forwarding from A's
// loopback to nginx, and returns A's local address.
func (b *bench) tunnel(ctx context.Context) (string, *yamux.Session, *yamux.Session, func(), error) {
	var la, lb []tunnel.Link
	for i, u := range b.tp.Uplinks {
		a := netip.AddrPortFrom(u.WANAddr4, 7000)
		bb := netip.AddrPortFrom(addrB(i), 7000)
		if err := b.tp.WAN.Do(func() error {
			l, err := tunnel.DialUDP(a, bb)
			la = append(la, l)
			return err
		}); err != nil {
			return "", nil, nil, nil, err
		}
		if err := b.tp.GW.Do(func() error {
			l, err := tunnel.DialUDP(bb, a)
			lb = append(lb, l)
			return err
		}); err != nil {
			return "", nil, nil, nil, err
		}
	}
	ka, _ := seal.GenerateKeyPair()
	kb, _ := seal.GenerateKeyPair()
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var sb *tunnel.Session
	var errB error
	var wg sync.WaitGroup
	wg.Go(func() { sb, errB = tunnel.Accept(hctx, tunnel.Config{Local: kb, Peer: ka.Public, Links: lb}) })
	sa, err := tunnel.Dial(hctx, tunnel.Config{Local: ka, Peer: kb.Public, Links: la})
	wg.Wait()
	if err != nil || errB != nil {
		return "", nil, nil, nil, fmt.Errorf("handshake: %v %v", err, errB)
	}
	b.sender = sb
	ma, err := tunnel.Mux(sa)
	if err != nil {
		return "", nil, nil, nil, err
	}
	mb, err := tunnel.Mux(sb)
	if err != nil {
		return "", nil, nil, nil, err
	}
	nginx := netip.MustParseAddrPort("127.0.0.1:8080")
	dial := func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		var c net.Conn
		err := b.tp.GW.Do(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, "tcp", dst.String())
			return err
		})
		return c, err
	}
	go forward.Serve(ctx, mb, func(d netip.AddrPort) bool { return d == nginx }, dial, nil)
	var ln net.Listener
	if err := b.tp.WAN.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:9000")
		return err
	}); err != nil {
		return "", nil, nil, nil, err
	}
	go forward.ServeListener(ln, ma, nginx, nil)
	stop := func() {
		ln.Close()
		closeAll(ma, mb)
		sa.Close()
		sb.Close()
	}
	return ln.Addr().String(), ma, mb, stop, nil
}

// streamStall sends size bytes on one stream opened by src (B: A has no
// stream server running), runs cut after a third, and returns the longest
// gap between two reads at dst.
func streamStall(src, dst *yamux.Session, size int, cut func() error) (time.Duration, error) {
	type result struct {
		stall time.Duration
		err   error
	}
	res := make(chan result, 1)
	go func() {
		st, err := dst.AcceptStream()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer st.Close()
		buf := make([]byte, 256<<10)
		last := time.Now()
		var stall time.Duration
		for n := 0; n < size; {
			k, err := st.Read(buf)
			now := time.Now()
			stall = max(stall, now.Sub(last))
			last = now
			n += k
			if err != nil {
				res <- result{err: err}
				return
			}
		}
		res <- result{stall: stall}
	}()
	st, err := src.OpenStream()
	if err != nil {
		return 0, err
	}
	defer st.Close()
	chunk := make([]byte, 1<<20)
	for off := 0; off < size; off += len(chunk) {
		if off == size/3/len(chunk)*len(chunk) {
			if err := cut(); err != nil {
				return 0, err
			}
		}
		if _, err := st.Write(chunk); err != nil {
			return 0, err
		}
	}
	select {
	case r := <-res:
		return r.stall, r.err
	case <-time.After(2 * time.Minute):
		return 0, errors.New("transfer stuck")
	}
}

func closeAll(ms ...*yamux.Session) {
	for _, m := range ms {
		m.Close()
	}
}

// mptcp measures Linux MPTCP: B announces its addresses on links 1 and 2,
// A opens a subflow from each of its addresses.
func (b *bench) mptcp(ctx context.Context, best func(func() (float64, error)) (float64, error)) (float64, error) {
	if _, err := exec.LookPath("mptcpize"); err != nil {
		return 0, errors.New("skipped: mptcpize not installed (Debian package mptcpd)")
	}
	for _, ns := range []*topo.NS{b.tp.WAN, b.tp.GW} {
		if out, err := ns.Run(ctx, "ip", "mptcp", "limits", "set", "subflow", "4", "add_addr_accepted", "4"); err != nil {
			return 0, fmt.Errorf("ip mptcp limits: %v: %s", err, out)
		}
	}
	for i, u := range b.tp.Uplinks[1:] {
		if out, err := b.tp.GW.Run(ctx, "ip", "mptcp", "endpoint", "add", addrB(i+1).String(), "dev", u.GWIf, "signal"); err != nil {
			return 0, fmt.Errorf("ip mptcp endpoint (B): %v: %s", err, out)
		}
		if out, err := b.tp.WAN.Run(ctx, "ip", "mptcp", "endpoint", "add", u.WANAddr4.String(), "dev", u.WANIf, "subflow"); err != nil {
			return 0, fmt.Errorf("ip mptcp endpoint (A): %v: %s", err, out)
		}
	}
	// nginx again, under mptcpize.
	for _, p := range b.procs {
		p.Stop()
	}
	b.procs = nil
	if err := b.nginx(ctx, true); err != nil {
		return 0, err
	}
	return best(func() (float64, error) {
		return b.curl(ctx, []string{"mptcpize", "run"}, "http://"+addrB(0).String()+":8080/f")
	})
}
