package netstack_test

import (
	"bytes"
	"net/netip"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/link"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/test/topo"
)

// synFlood sends SYNs from tp's wan namespace to a closed port of addr until
// stop is closed, from n threads: each draws a reset from the INS, which
// looks up the NIC under the netstack's lock. It returns the number of
// connection attempts once stopped.
func synFlood(t *testing.T, tp *topo.Topology, addr netip.Addr, n int, stop <-chan struct{}) func() uint64 {
	t.Helper()
	var sent atomic.Uint64
	var wg sync.WaitGroup
	sa := &unix.SockaddrInet4{Port: 9, Addr: addr.As4()}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := tp.WAN.Do(func() error {
				for {
					select {
					case <-stop:
						return nil
					default:
					}
					fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						return err
					}
					_ = unix.Connect(fd, sa) // EINPROGRESS: the SYN is out
					unix.Close(fd)
					sent.Add(1)
				}
			})
			if err != nil {
				t.Errorf("syn flood: %v", err)
			}
		}()
	}
	return func() uint64 { wg.Wait(); return sent.Load() }
}

// TestDetachUnderLoad removes an uplink, and closes a stack, while the wan
// floods the INS with SYNs to a closed port. The netstack detaches a NIC
// and waits for its link endpoint with its own lock held, while the link's
// reader may be delivering a SYN whose reset needs that lock; neither
// backend may deadlock there.
func TestDetachUnderLoad(t *testing.T) {
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	for i, tc := range []struct {
		name    string
		backend link.Backend
	}{{"packet", link.BackendPacket}, {"xdp", link.BackendXDP}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.backend == link.BackendXDP {
				requireXDP(t)
			}
			for round := 0; round < 10; round++ {
				n := 30 + i*10 + round
				ti := startTopoINS(t, tp, n, n, tc.backend, false)
				stop := make(chan struct{})
				wait := synFlood(t, tp, ti.addr, 2, stop)
				time.Sleep(150 * time.Millisecond)
				op, done := "close the stack", make(chan error, 1)
				if round%2 == 0 {
					op = "remove the uplink"
					go func() { done <- ti.s.RemoveUplink("u0") }()
				} else {
					go func() { ti.s.Close(); done <- nil }()
				}
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("round %d: %s: %v", round, op, err)
					}
				case <-time.After(20 * time.Second):
					var b bytes.Buffer
					_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
					close(stop)
					t.Fatalf("round %d: %s did not return within 20 s under a SYN flood:\n%s", round, op, b.String())
				}
				close(stop)
				if sent := wait(); sent < 100 {
					t.Errorf("round %d: only %d SYNs sent: the flood did not run", round, sent)
				}
			}
		})
	}
}
