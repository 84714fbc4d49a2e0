package hold

import (
	"context"
	"net"
	"net/netip"
	"testing"
)

// TestOpen holds connections to a loopback listener and checks that the
// server side sees each of them, from the requested source address.
func TestOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 300)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	target := ln.Addr().(*net.TCPAddr).AddrPort()
	src := netip.MustParseAddr("127.0.0.1")
	set, res, err := Open(context.Background(), Config{N: 200, Sources: []netip.Addr{src}, Targets: []netip.AddrPort{target}, Concurrency: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if res.Established != 200 || res.Failed != 0 || set.Len() != 200 {
		t.Fatalf("result %+v, set %d; want 200 established", res, set.Len())
	}
	for range 200 {
		c := <-accepted
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != src {
			t.Fatalf("connection from %v, want %v", got, src)
		}
		c.Close()
	}
	// A closed port: every connect fails and is counted.
	ln.Close()
	_, res, err = Open(context.Background(), Config{N: 5, Targets: []netip.AddrPort{target}})
	if err != nil || res.Failed != 5 || res.Established != 0 || res.FirstError == "" {
		t.Fatalf("refused: %+v %v; want 5 failures with an error", res, err)
	}
	if _, _, err := Open(context.Background(), Config{N: 0}); err == nil {
		t.Fatal("N=0 accepted")
	}
}
