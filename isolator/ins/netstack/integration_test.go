package netstack_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/netns"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/netstack"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestTwoUplinksIntegration runs one INS with macvlans on two uplinks and
// checks reachability, ping, outbound spreading by weight, failover when an
// uplink goes down, and a 1 MiB echo whose replies stay on their uplink.
func TestTwoUplinksIntegration(t *testing.T) {
	m := instest.NewMiniTopo(t, 2)
	_, s := instest.StartINS(t, m, 1, 10, netstack.DefaultProbeInterval, 0, 1)
	insAddr := []netip.Addr{m.Ups[0].HostAddr(10).Addr(), m.Ups[1].HostAddr(10).Addr()}

	ln, err := gonet.ListenTCP(s.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go instest.EchoServe(ln)

	t.Run("reachable and pingable on both uplinks", func(t *testing.T) {
		for _, a := range insAddr {
			instest.EchoFromWAN(t, m, a, []byte("hello "+a.String()))
			if err := m.InWAN(func() error { return pingOnce(a, 3*time.Second) }); err != nil {
				t.Errorf("ping %v: %v", a, err)
			}
		}
	})

	t.Run("1 MiB echo, replies on the arrival uplink", func(t *testing.T) {
		msg := make([]byte, 1<<20)
		if _, err := rand.Read(msg); err != nil {
			t.Fatal(err)
		}
		before := countersByName(s)
		// Source 10.80.0.1 (uplink 0's subnet) to the INS address on
		// uplink 1: an on-link route would send the replies out of
		// uplink 0; they must leave where the flow came in.
		var c net.Conn
		if err := m.InWAN(func() (err error) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: m.Ups[0].WANAddr.Addr().AsSlice()}}
			c, err = d.Dial("tcp", netip.AddrPortFrom(insAddr[1], 7).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() { _, _ = c.Write(msg) }()
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := ioReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("1 MiB echo: %v (identical=%v)", err, string(got) == string(msg))
		}
		after := countersByName(s)
		out1 := after["u1"].TxBytes - before["u1"].TxBytes
		out0 := after["u0"].TxBytes - before["u0"].TxBytes
		// Uplink 0 only sends its gateway probes meanwhile.
		if out1 < 1<<20 || out0 > 16<<10 {
			t.Fatalf("reply bytes: uplink1 %d, uplink0 %d; want >= 1 MiB on uplink1 and only probes on uplink0", out1, out0)
		}
	})

	// A TCP server in wan that records the source address of each
	// connection.
	var srv net.Listener
	if err := m.InWAN(func() (err error) { srv, err = net.Listen("tcp", "0.0.0.0:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var mu sync.Mutex
	seen := map[netip.Addr]int{}
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			seen[netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap()]++
			mu.Unlock()
			c.Close()
		}
	}()
	server := netip.AddrPortFrom(m.Ups[0].WANAddr.Addr(), 9000)
	dialN := func(t *testing.T, n int) map[netip.Addr]int {
		t.Helper()
		mu.Lock()
		clear(seen)
		mu.Unlock()
		for i := 0; i < n; i++ {
			nic, local, err := s.ChooseUplink(server, tcp.ProtocolNumber)
			if err != nil {
				t.Fatalf("ChooseUplink: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := gonet.DialTCPWithBind(ctx, s.Stack(), tcpip.FullAddress{NIC: nic, Addr: local},
				tcpip.FullAddress{Addr: instest.TCPAddr(server.Addr()), Port: server.Port()}, ipv4.ProtocolNumber)
			cancel()
			if err != nil {
				t.Fatalf("connection %d via NIC %d: %v", i, nic, err)
			}
			c.Close()
		}
		instest.WaitFor(t, 5*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return seen[insAddr[0]]+seen[insAddr[1]] >= n
		})
		mu.Lock()
		defer mu.Unlock()
		return maps(seen)
	}
	for _, w := range []struct{ w0, w1 int }{{1, 1}, {3, 1}} {
		t.Run(fmt.Sprintf("100 connections by weight %d:%d", w.w0, w.w1), func(t *testing.T) {
			if err := s.SetWeight("u0", w.w0); err != nil {
				t.Fatal(err)
			}
			if err := s.SetWeight("u1", w.w1); err != nil {
				t.Fatal(err)
			}
			got := dialN(t, 100)
			want := 100 * float64(w.w0) / float64(w.w0+w.w1)
			if got[insAddr[0]]+got[insAddr[1]] != 100 || math.Abs(float64(got[insAddr[0]])-want) > 10 {
				t.Fatalf("server saw %v; want %.0f±10 from %v", got, want, insAddr[0])
			}
		})
	}

	t.Run("uplink down: new connections move within 1 s", func(t *testing.T) {
		nic1, _ := s.NIC("u1")
		if err := s.SetWeight("u0", 1); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		m.SetUplinkDown(t, 1)
		var moved time.Duration
		for {
			// Every pick in a window must avoid the dead uplink.
			ok := true
			for i := 0; i < 4; i++ {
				if nic, _, err := s.ChooseUplink(server, tcp.ProtocolNumber); err != nil || nic == nic1 {
					ok = false
				}
			}
			if ok {
				moved = time.Since(start)
				break
			}
			if time.Since(start) > 3*time.Second {
				t.Fatal("uplink 1 still chosen 3 s after going down")
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("new flows left the down uplink after %v", moved)
		if moved > time.Second {
			t.Errorf("took %v, want < 1 s", moved)
		}
		got := dialN(t, 20)
		if got[insAddr[0]] != 20 {
			t.Fatalf("after uplink 1 went down the server saw %v, want all 20 from %v", got, insAddr[0])
		}
	})
}

func maps(m map[netip.Addr]int) map[netip.Addr]int {
	out := make(map[netip.Addr]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func ioReadFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// pingOnce sends one ICMP echo from the calling thread's namespace over a
// kernel ping socket and waits for the reply.
func pingOnce(dst netip.Addr, timeout time.Duration) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return fmt.Errorf("ping socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	req := make([]byte, 16)
	req[0] = 8 // echo request; the kernel sets the identifier and checksum
	binary.BigEndian.PutUint16(req[6:], 0x4d50)
	copy(req[8:], "mpshim!!")
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return fmt.Errorf("send echo: %w", err)
	}
	buf := make([]byte, 1500)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("no echo reply: %w", err)
	}
	if n < 16 || buf[0] != 0 || binary.BigEndian.Uint16(buf[6:]) != 0x4d50 || string(buf[8:16]) != "mpshim!!" {
		return fmt.Errorf("unexpected reply % x", buf[:n])
	}
	return nil
}

const rssChildEnv = "MPSHIM_INS_RSS_CHILD"

// TestIdleRSS measures the resident memory of a process that runs one INS
// netstack.Stack with two AF_PACKET NICs and health probes, idle.
func TestIdleRSS(t *testing.T) {
	m := instest.NewMiniTopo(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nns, err := netns.Prepare(ctx, 9, m.GW, []netns.HostUplink{{Parent: "g0"}, {Parent: "g1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer nns.Close()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", nns.Name, os.Args[0], "-test.run=^TestIdleRSSChild$")
	cmd.Env = append(os.Environ(), rssChildEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	buf := make([]byte, 64)
	n, _ := stdout.Read(buf) // "READY\n" once the stack is up
	if !strings.Contains(string(buf[:n]), "READY") {
		t.Fatalf("child not ready: %q", buf[:n])
	}
	time.Sleep(2 * time.Second) // let probes run and memory settle
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			t.Logf("idle RSS of a process with one netstack.Stack, 2 NICs: %d KiB", kb)
			if kb <= 0 || kb > 64<<10 {
				t.Fatalf("idle RSS %d KiB out of the expected range", kb)
			}
			return
		}
	}
	t.Fatal("no VmRSS")
}

func TestIdleRSSChild(t *testing.T) {
	if os.Getenv(rssChildEnv) != "1" {
		t.Skip("helper: runs only re-executed by TestIdleRSS")
	}
	s, err := netstack.New(netstack.Config{ID: 9, GOMAXPROCS: 1, Uplinks: []netstack.UplinkConfig{
		{Name: "u0", Interface: "up0", Addr4: netip.MustParsePrefix("10.80.0.10/24"), Gateway4: netip.MustParseAddr("10.80.0.1"), RXChecksumOffload: true},
		{Name: "u1", Interface: "up1", Addr4: netip.MustParsePrefix("10.81.0.10/24"), Gateway4: netip.MustParseAddr("10.81.0.1"), RXChecksumOffload: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fmt.Println("READY")
	select {} // idle until killed
}
