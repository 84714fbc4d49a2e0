package udpping

import (
	"context"
	"net"
	"testing"
	"time"
)

// echo serves UDP echo on loopback, dropping the first drop datagrams.
func echo(t *testing.T, drop int) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for i := 0; ; i++ {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if i >= drop {
				_, _ = pc.WriteTo(buf[:n], from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

func TestRun(t *testing.T) {
	r, err := Run(context.Background(), echo(t, 2), 64, 300*time.Millisecond, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Lost != 2 || r.Sent < 10 || r.P50 <= 0 || r.P99 < r.P50 || r.Rate <= 0 {
		t.Fatalf("result %+v", r)
	}
}

func TestNoServer(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	if _, err := Run(context.Background(), addr, 64, 100*time.Millisecond, 20*time.Millisecond); err == nil {
		t.Fatal("a run without a server succeeded")
	}
	if _, err := Run(context.Background(), addr, 4, time.Millisecond, time.Millisecond); err == nil {
		t.Fatal("size 4 accepted")
	}
}
