package xdp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/test/topo"
)

// requireXDP skips when the kernel has no AF_XDP sockets and fails under
// CI, whose kernel must have them.
func requireXDP(t *testing.T) {
	t.Helper()
	topo.RequireRoot(t)
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
		return
	}
	if errors.Is(err, unix.EAFNOSUPPORT) && os.Getenv("CI") != "true" {
		t.Skipf("kernel lacks AF_XDP sockets (CONFIG_XDP_SOCKETS): %v", err)
	}
	t.Fatalf("AF_XDP socket: %v", err)
}

// macvlan makes a private-mode macvlan child of the gw end of tp's uplink 0
// (as an INS gets) and returns its index and MAC address.
func macvlan(t *testing.T, tp *topo.Topology) (int, net.HardwareAddr) {
	t.Helper()
	ctx := context.Background()
	for _, args := range [][]string{
		{"link", "add", "link", tp.Uplinks[0].GWIf, "name", "xm0", "type", "macvlan", "mode", "private"},
		{"link", "set", "xm0", "up"},
	} {
		if _, err := tp.GW.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	var ifc *net.Interface
	if err := tp.GW.Do(func() (err error) { ifc, err = net.InterfaceByName("xm0"); return err }); err != nil {
		t.Fatal(err)
	}
	return ifc.Index, ifc.HardwareAddr
}

// TestProgramVerdicts runs the program in the kernel (BPF_PROG_TEST_RUN):
// with no socket for the queue it drops, with one it redirects.
func TestProgramVerdicts(t *testing.T) {
	requireXDP(t)
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	ifindex, _ := macvlan(t, tp)
	r, err := NewRedirect(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	frame := make([]byte, 64)
	verdict := func() uint32 {
		t.Helper()
		ret, err := r.Program.Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	if v := verdict(); v != ActionDrop {
		t.Errorf("no socket: verdict %d, want drop (%d)", v, ActionDrop)
	}
	var s *Socket
	if err := tp.GW.Do(func() (err error) { s, err = Open(ifindex, 0, Config{FrameSize: 2048, RingSize: 64}); return err }); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := r.SetSocket(0, s.FD()); err != nil {
		t.Fatal(err)
	}
	if v := verdict(); v != ActionRedirect {
		t.Errorf("socket in slot 0: verdict %d, want redirect (%d)", v, ActionRedirect)
	}
	if err := r.SetSocket(1, s.FD()); err == nil {
		t.Error("SetSocket accepted queue 1 of a one-queue map")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{DefaultConfig, true},
		{Config{FrameSize: 4096, RingSize: 64}, true},
		{Config{FrameSize: 1024, RingSize: 64}, false},
		{Config{FrameSize: 2048, RingSize: 100}, false},
		{Config{FrameSize: 2048, RingSize: 32}, false},
		{Config{FrameSize: 2048, RingSize: 1 << 17}, false},
	} {
		if err := tc.cfg.validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: validate() = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
	if _, err := Open(0, 0, DefaultConfig); err == nil {
		t.Error("Open accepted interface index 0")
	}
	if _, err := NewRedirect(0); err == nil {
		t.Error("NewRedirect accepted 0 queues")
	}
}

// TestSocketReceive attaches the program to a macvlan and sends UDP
// datagrams to its MAC address from wan, in bursts that wrap the 64-slot
// rings several times; every datagram must come out of the socket intact
// and in order.
func TestSocketReceive(t *testing.T) {
	requireXDP(t)
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	ifindex, mac := macvlan(t, tp)
	var s *Socket
	if err := tp.GW.Do(func() (err error) { s, err = Open(ifindex, 0, Config{FrameSize: 2048, RingSize: 64}); return err }); err != nil {
		t.Fatal(err)
	}
	r, err := NewRedirect(1)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := r.SetSocket(0, s.FD()); err != nil {
		t.Fatal(err)
	}
	// The interface index is resolved in the namespace of the thread.
	if err := tp.GW.Do(func() error { return r.Attach(ifindex) }); err != nil {
		t.Fatal(err)
	}
	if err := tp.GW.Do(func() error { return r.Attach(ifindex) }); err == nil {
		t.Error("second Attach succeeded")
	}
	// 10.77.0.99 is the macvlan, as far as wan knows.
	up := tp.Uplinks[0]
	if _, err := tp.WAN.Run(context.Background(), "ip", "neigh", "replace", "10.77.0.99", "lladdr", mac.String(), "dev", up.WANIf); err != nil {
		t.Fatal(err)
	}
	var c *net.UDPConn
	if err := tp.WAN.Do(func() (err error) {
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 77, 0, 99), Port: 9999})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const bursts, perBurst = 20, 40
	next := 0
	for b := 0; b < bursts; b++ {
		for i := 0; i < perBurst; i++ {
			msg := make([]byte, 1000)
			binary.BigEndian.PutUint32(msg, uint32(b*perBurst+i))
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for next < (b+1)*perBurst {
			if time.Now().After(deadline) {
				st, _ := s.Statistics()
				t.Fatalf("burst %d: got datagrams up to %d of %d; socket statistics %+v", b, next, (b+1)*perBurst, st)
			}
			fds := []unix.PollFd{{Fd: int32(s.FD()), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, 100); err != nil && !errors.Is(err, unix.EINTR) {
				t.Fatal(err)
			}
			s.Receive(16, func(frame []byte) {
				seq, ok := udpSeq(frame, 9999)
				if !ok {
					return // other traffic (ARP, ...)
				}
				if seq != uint32(next) {
					t.Errorf("datagram %d arrived when %d was due", seq, next)
				}
				next = int(seq) + 1
			})
		}
	}
	st, err := s.Statistics()
	if err != nil {
		t.Fatal(err)
	}
	if st.Rx_dropped != 0 || st.Rx_ring_full != 0 {
		t.Errorf("kernel dropped frames: %+v", st)
	}
	if s.MaxFrame() != 2048-RXHeadroom {
		t.Errorf("MaxFrame %d", s.MaxFrame())
	}
}

// udpSeq returns the first 4 payload bytes of a whole Ethernet/IPv4/UDP
// frame of the test's 1000-byte datagrams to port.
func udpSeq(frame []byte, port uint16) (uint32, bool) {
	if len(frame) < 14+20+8+4 || !bytes.Equal(frame[12:14], []byte{0x08, 0x00}) {
		return 0, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8+4 {
		return 0, false
	}
	udp := ip[ihl:]
	if binary.BigEndian.Uint16(udp[2:]) != port {
		return 0, false
	}
	if n := int(binary.BigEndian.Uint16(udp[4:])); n != 8+1000 || len(udp) < n {
		// Cut short: the gap in the sequence fails the test.
		return 0, false
	}
	return binary.BigEndian.Uint32(udp[8:]), true
}
