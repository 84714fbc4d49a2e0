package forward

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

func TestHeader(t *testing.T) {
	for _, dst := range []string{"10.20.0.5:80", "[fd00::1]:443", "127.0.0.1:1"} {
		var b bytes.Buffer
		ap := netip.MustParseAddrPort(dst)
		if err := WriteHeader(&b, ap); err != nil {
			t.Fatal(err)
		}
		got, err := ReadHeader(&b)
		if err != nil || got != ap {
			t.Fatalf("%s: %v %v", dst, got, err)
		}
	}
	hdr := func(v, k byte, addr string) []byte {
		b := []byte{v, k, 0, 0}
		binary.BigEndian.PutUint16(b[2:], uint16(len(addr)))
		return append(b, addr...)
	}
	for name, b := range map[string][]byte{
		"empty":     nil,
		"short":     {1, 1, 0},
		"version":   hdr(2, 1, "1.2.3.4:5"),
		"kind":      hdr(1, 2, "1.2.3.4:5"),
		"no addr":   hdr(1, 1, ""),
		"truncated": hdr(1, 1, "1.2.3.4:5")[:8],
		"too long":  hdr(1, 1, strings.Repeat("1", 65)),
		"port 0":    hdr(1, 1, "1.2.3.4:0"),
		"no port":   hdr(1, 1, "1.2.3.4"),
		"name":      hdr(1, 1, "example.com:80"),
	} {
		if _, err := ReadHeader(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzReadHeader(f *testing.F) {
	var b bytes.Buffer
	WriteHeader(&b, netip.MustParseAddrPort("10.0.0.1:80"))
	f.Add(b.Bytes())
	f.Add([]byte{1, 1, 0, 3, 'a', 'b', 'c'})
	f.Fuzz(func(t *testing.T, p []byte) {
		dst, err := ReadHeader(bytes.NewReader(p))
		if err != nil {
			return
		}
		var out bytes.Buffer
		WriteHeader(&out, dst)
		if back, err := ReadHeader(&out); err != nil || back != dst {
			t.Fatalf("%v does not round-trip: %v %v", dst, back, err)
		}
	})
}

// muxPair is real yamux over an in-memory pipe: the forwarding logic is
// what is tested here, the tunnel has its own tests.
func muxPair(t *testing.T) (*yamux.Session, *yamux.Session) {
	a, b := net.Pipe()
	c, err := yamux.Client(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := yamux.Server(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func TestDialServe(t *testing.T) {
	c, s := muxPair(t)
	// The destination: an echo server on loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(conn, conn); conn.Close() }()
		}
	}()
	echo := ln.Addr().(*net.TCPAddr).AddrPort()
	allowed := netip.MustParsePrefix("127.0.0.0/8")
	go Serve(context.Background(), s, func(d netip.AddrPort) bool { return allowed.Contains(d.Addr()) }, nil, nil)

	st, err := Dial(c, echo)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("through the stream")
	st.Write(msg)
	got := make([]byte, len(msg))
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatal(err, got)
	}
	st.Close()

	if _, err := Dial(c, netip.MustParseAddrPort("10.1.2.3:80")); !errors.Is(err, ErrRefused) {
		t.Fatalf("destination outside the policy: %v", err)
	}
	// Allowed but nothing listens: the far side says it could not connect.
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()
	if _, err := Dial(c, dead); !errors.Is(err, ErrDialFailed) {
		t.Fatalf("dead destination: %v", err)
	}
	// A stream with a bad header is closed by the server; the session lives on.
	bad, err := c.Open()
	if err != nil {
		t.Fatal(err)
	}
	bad.Write([]byte{9, 9, 9, 9})
	bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := bad.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("bad header answered: %d %v", n, err)
	}
	if _, err := Dial(c, echo); err != nil {
		t.Fatalf("after a bad stream: %v", err)
	}
}
