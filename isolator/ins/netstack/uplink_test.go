package netstack_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/link"
	"github.com/mpshim/mpshim/isolator/ins/netstack"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// TestAddUplinkFD: a stack built on uplink 0 gets uplink 1 at run time on a
// link socket opened from outside its namespace (as the daemon does for a
// sandboxed INS): a listener answers on the new address, UplinkConns counts
// a connection on it, ResetUplinkConns ends that connection for the peer,
// and descriptors that are not the right packet socket are refused.
func TestAddUplinkFD(t *testing.T) {
	m := instest.NewMiniTopo(t, 2)
	nns, s := instest.StartINS(t, m, 1, 10, -1, 0)
	ctx := context.Background()
	if _, err := nns.AddLink(ctx, m.GW, m.Ups[1].GWIf, "up1"); err != nil {
		t.Fatal(err)
	}
	if _, err := nns.AddLink(ctx, m.GW, m.Ups[1].GWIf, "up1"); err == nil {
		t.Fatal("a second link named up1 was added")
	}
	cfg := netstack.UplinkConfig{Name: "u1", Interface: "up1", Addr4: m.Ups[1].HostAddr(10), Gateway4: m.Ups[1].WANAddr.Addr(), RXChecksumOffload: true}

	// Refusals: not a packet socket; a packet socket of another interface.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[1])
	if err := s.AddUplinkFD(cfg, os.NewFile(uintptr(fds[0]), "unix")); err == nil || !strings.Contains(err.Error(), "not an AF_PACKET") {
		t.Errorf("AddUplinkFD with a unix socket: %v", err)
	}
	other, err := link.OpenFile(nns.Path, "up0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddUplinkFD(cfg, other); err == nil || !strings.Contains(err.Error(), "bound to interface") {
		t.Errorf("AddUplinkFD with up0's socket for up1: %v", err)
	}
	if _, err := link.OpenFile(nns.Path, "nosuch0"); err == nil {
		t.Error("OpenLinkFile of a missing interface succeeded")
	}

	f, err := link.OpenFile(nns.Path, "up1")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddUplinkFD(cfg, f); err != nil {
		t.Fatal(err)
	}
	ln, err := gonet.ListenTCP(s.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go instest.EchoServe(ln)
	instest.EchoFromWAN(t, m, m.Ups[1].HostAddr(10).Addr(), []byte("via the added uplink"))

	var c net.Conn
	if err := m.InWAN(func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(m.Ups[1].HostAddr(10).Addr(), 7).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(3 * time.Second)
	for s.UplinkConns()["u1"] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("UplinkConns = %v with one connection open on u1", s.UplinkConns())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.UplinkConns()["u0"]; n != 0 {
		t.Errorf("UplinkConns on u0 = %d, want 0", n)
	}
	if n := s.ResetUplinkConns("u1"); n != 1 {
		t.Fatalf("ResetUplinkConns = %d, want 1", n)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Fatalf("peer read after the reset: %v, want the connection reset", err)
	}
	if err := s.RemoveUplink("u1"); err != nil {
		t.Fatal(err)
	}
	if err := nns.RemoveLink(ctx, "up1"); err != nil {
		t.Fatal(err)
	}
	if len(nns.Links) != 1 {
		t.Fatalf("links after RemoveLink: %+v", nns.Links)
	}
}
