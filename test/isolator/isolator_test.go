// Package isolator_test runs the real isolator daemon (bin/isolator, from
// $MPSHIM_BIN) in a test topology and drives it through the Go client
// mpnet: listeners replicated into every INS, outbound flows spread over
// the uplinks, bulk and concurrent traffic, and the loss of an INS.
package isolator_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/mpnet"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// setup builds a two-uplink topology with a daemon running ins INS and
// registers an mpnet client with it.
func setup(t *testing.T, ins int, weights ...int) (*topo.Topology, *harness.Isolator, *mpnet.Client) {
	t.Helper()
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 2})
	ups := harness.DefaultUplinks(tp)
	for i, w := range weights {
		ups[i].Weight = w
	}
	d := harness.StartIsolator(t, tp, harness.Options{INS: ins, Uplinks: ups})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := mpnet.Register(ctx, d.Socket)
	if err != nil {
		t.Fatalf("mpnet.Register: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return tp, d, c
}

// wanServer runs a TCP server in the wan namespace on every address:
// handle serves each connection.
func wanServer(t *testing.T, tp *topo.Topology, handle func(net.Conn)) (port int) {
	t.Helper()
	var ln net.Listener
	if err := tp.WAN.Do(func() (err error) {
		ln, err = net.Listen("tcp", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func echo(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
}

// wanDial connects from the wan namespace.
func wanDial(tp *topo.Topology, addr string) (net.Conn, error) {
	var c net.Conn
	err := tp.WAN.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	return c, err
}

// serveEcho accepts on ln and echoes every connection.
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go echo(c)
	}
}

func roundTrip(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, want %q", buf, msg)
	}
	return nil
}

// TestListenerOnEveryINS: `isolator spawn` brings the daemon to 20 INS
// that ls shows, and a listener opened through mpnet before the spawn
// answers on every INS address of both uplinks.
func TestListenerOnEveryINS(t *testing.T) {
	tp, d, c := setup(t, 3)
	ctx := context.Background()
	ln, err := c.Listen(ctx, "tcp4", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveEcho(ln)
	if out, err := d.CLI("spawn", "-n", "17"); err != nil {
		t.Fatalf("spawn: %v\n%s", err, out)
	}
	infos, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 20 {
		t.Fatalf("ls shows %d INS, want 20", len(infos))
	}
	n := 0
	for _, in := range infos {
		for _, u := range in.Uplinks {
			pfx, err := netip.ParsePrefix(u.Addr4)
			if err != nil {
				t.Fatalf("INS %d: address %q: %v", in.ID, u.Addr4, err)
			}
			addr := net.JoinHostPort(pfx.Addr().String(), "8080")
			// A spawned INS gets its replica in the background: allow it a moment.
			for try := 0; try < 20; try++ {
				var conn net.Conn
				if conn, err = wanDial(tp, addr); err == nil {
					err = roundTrip(conn, "hello "+addr)
					conn.Close()
				}
				if err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Errorf("INS %d uplink %s: %s: %v", in.ID, u.Name, addr, err)
			}
			n++
		}
	}
	if n != 40 {
		t.Fatalf("checked %d INS addresses, want 40", n)
	}
}

// uplinkOf returns the uplink a wan-side peer address belongs to
// (10.77.I.x).
func uplinkOf(a net.Addr) int {
	ap := a.(*net.TCPAddr).AddrPort()
	return int(ap.Addr().As4()[2])
}

// TestOutboundSpreadAndFailover: 100 outbound connections spread over the
// uplinks by their weights (3:1, ±10 %); with uplink 1 down every new
// connection leaves by uplink 0.
func TestOutboundSpreadAndFailover(t *testing.T) {
	tp, _, c := setup(t, 2, 3, 1)
	var mu sync.Mutex
	count := map[int]int{}
	port := wanServer(t, tp, func(conn net.Conn) {
		mu.Lock()
		count[uplinkOf(conn.RemoteAddr())]++
		mu.Unlock()
		echo(conn)
	})
	ctx := context.Background()
	dialAll := func(n int, target netip.Addr) {
		t.Helper()
		for i := range n {
			conn, err := c.Dial(ctx, "tcp4", netip.AddrPortFrom(target, uint16(port)).String())
			if err != nil {
				t.Fatalf("dial %d: %v", i, err)
			}
			if err := roundTrip(conn, "x"); err != nil {
				t.Fatalf("dial %d: %v", i, err)
			}
			conn.Close()
		}
	}
	// The wan namespace holds .1 on both uplinks; either address reaches it.
	target := tp.Uplinks[0].WANAddr4
	dialAll(100, target)
	mu.Lock()
	got0, got1 := count[0], count[1]
	mu.Unlock()
	t.Logf("100 connections, weights 3:1: uplink 0 %d, uplink 1 %d", got0, got1)
	if got0+got1 != 100 || got0 < 65 || got0 > 85 {
		t.Fatalf("uplink 0 carried %d of %d, want 75 ± 10", got0, got0+got1)
	}
	if err := tp.SetUplinkDown(1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // let the INS notice the carrier loss
	mu.Lock()
	clear(count)
	mu.Unlock()
	dialAll(40, target)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("after uplink 1 down: uplink 0 %d, uplink 1 %d", count[0], count[1])
	if count[1] != 0 || count[0] != 40 {
		t.Fatalf("with uplink 1 down: %v, want all 40 on uplink 0", count)
	}
}

// TestBulkEcho: 1 MiB through an INS comes back byte-identical.
func TestBulkEcho(t *testing.T) {
	tp, _, c := setup(t, 1)
	port := wanServer(t, tp, echo)
	conn, err := c.Dial(context.Background(), "tcp", net.JoinHostPort(tp.Uplinks[0].WANAddr4.String(), fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	start := time.Now()
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		if err == nil {
			err = conn.(*mpnet.Conn).CloseWrite()
		}
		werr <- err
	}()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, not identical to the 1 MiB sent", len(got))
	}
	t.Logf("1 MiB echoed in %v", time.Since(start))
}

// TestThousandConnections: 1,000 concurrent connections through one INS
// all complete. It logs the INS's memory idle and with them open.
func TestThousandConnections(t *testing.T) {
	tp, d, c := setup(t, 1)
	port := wanServer(t, tp, echo)
	addr := net.JoinHostPort(tp.Uplinks[0].WANAddr4.String(), fmt.Sprint(port))
	const n = 1000
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	idle := insRSS(t, d)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	conns := make(chan net.Conn, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := c.Dial(ctx, "tcp", addr)
			if err != nil {
				errs <- fmt.Errorf("conn %d: dial: %w", i, err)
				return
			}
			conns <- conn
			if err := roundTrip(conn, fmt.Sprintf("message %d", i)); err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(conns)
	if open := insRSS(t, d); open > idle {
		t.Logf("INS RSS idle %d KiB, with %d connections open %d KiB: %.1f KiB per connection",
			idle>>10, n, open>>10, float64(open-idle)/n/1024)
	}
	for conn := range conns {
		conn.Close()
	}
	failed := 0
	for err := range errs {
		if failed < 5 {
			t.Error(err)
		}
		failed++
	}
	if failed > 0 {
		t.Fatalf("%d of %d connections failed", failed, n)
	}
	t.Logf("%d concurrent connections completed in %v", n, time.Since(start))
}

// insRSS is the resident memory of the isolator's first INS.
func insRSS(t *testing.T, d *harness.Isolator) uint64 {
	t.Helper()
	infos, err := d.List()
	if err != nil || len(infos) == 0 {
		t.Fatalf("isolator ls: %v %v", infos, err)
	}
	return infos[0].RSS
}

// TestINSKilled: kill -9 of an INS is reported within a second and
// connections on the other INS keep working.
func TestINSKilled(t *testing.T) {
	tp, d, c := setup(t, 3)
	port := wanServer(t, tp, echo)
	addr := net.JoinHostPort(tp.Uplinks[0].WANAddr4.String(), fmt.Sprint(port))
	ctx := context.Background()
	// Enough connections that every INS serves some (placement is least
	// loaded).
	var conns []*mpnet.Conn
	for i := range 9 {
		conn, err := c.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer conn.Close()
		conns = append(conns, conn.(*mpnet.Conn))
	}
	infos, err := d.List()
	if err != nil || len(infos) != 3 {
		t.Fatalf("ls: %d INS, %v", len(infos), err)
	}
	victim := infos[0]
	t0 := time.Now()
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, at, ok := d.WaitLog(t0, 3*time.Second, "INS died", fmt.Sprintf("ins=%d ", victim.ID))
	if !ok || at.Sub(t0) > time.Second {
		t.Fatalf("kill -9 of INS %d not reported within 1 s (found %v after %v)", victim.ID, ok, at.Sub(t0))
	}
	t.Logf("INS %d death reported after %v", victim.ID, at.Sub(t0))
	others := 0
	for i, conn := range conns {
		if int(conn.Sock()>>48) == victim.ID {
			continue
		}
		others++
		if err := roundTrip(conn, fmt.Sprintf("still here %d", i)); err != nil {
			t.Errorf("connection %d on INS %d after INS %d died: %v", i, conn.Sock()>>48, victim.ID, err)
		}
	}
	if others == 0 {
		t.Fatal("no connection was placed on a surviving INS")
	}
	// New connections still work.
	conn, err := c.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial after the kill: %v", err)
	}
	defer conn.Close()
	if err := roundTrip(conn, "new"); err != nil {
		t.Fatal(err)
	}
}
