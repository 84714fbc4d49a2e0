package split

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/split/seal"
	"github.com/mpshim/mpshim/test/topo"
	"golang.org/x/sys/unix"
)

// capture records every frame on one interface of a namespace through an
// AF_PACKET socket: the bytes on the wire and the UDP payloads, searched
// for plaintext windows when stopped.
type capture struct {
	fd      int
	windows [][]byte
	mu      sync.Mutex
	payload []byte
	bytes   uint64
	hits    int
	out     [][]byte // outgoing sealed packets seen, kept for injection
	keepOut int
	done    chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// packetSocket opens an AF_PACKET socket bound to ifname inside ns.
func packetSocket(t *testing.T, ns *topo.NS, ifname string) int {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind %s: %w", ifname, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// startCapture captures ifname in ns until stop; keepOut > 0 keeps that
// many outgoing sealed packets (whole frames).
func startCapture(t *testing.T, ns *topo.NS, ifname string, windows [][]byte) *capture {
	return startCaptureKeep(t, ns, ifname, windows, 0)
}

func startCaptureKeep(t *testing.T, ns *topo.NS, ifname string, windows [][]byte, keepOut int) *capture {
	c := &capture{fd: packetSocket(t, ns, ifname), windows: windows, keepOut: keepOut, done: make(chan struct{})}
	_ = unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		for {
			select {
			case <-c.done:
				return
			default:
			}
			n, from, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			frame := buf[:n]
			c.mu.Lock()
			c.bytes += uint64(n)
			if p, ok := udpPayload(frame); ok {
				c.payload = append(c.payload, p...)
				if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING &&
					len(c.out) < c.keepOut && len(p) > 200 && p[0] == seal.TypeData {
					c.out = append(c.out, bytes.Clone(frame))
				}
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		c.stop()
		<-stopped
		unix.Close(c.fd)
	})
	return c
}

// stop ends the capture and searches it.
func (c *capture) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	close(c.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hits = countWindows(c.payload, c.windows)
	c.payload = nil
}

func (c *capture) sealed() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out
}

// countWindows counts occurrences of any window in b.
func countWindows(b []byte, windows [][]byte) int {
	n := 0
	for _, w := range windows {
		n += bytes.Count(b, w)
	}
	return n
}

// udpPayload returns the UDP payload of an Ethernet/IPv4 frame.
func udpPayload(f []byte) ([]byte, bool) {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return nil, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8 {
		return nil, false
	}
	return ip[ihl+8:], true
}

// inject sends whole frames out of ifname in ns.
func inject(t *testing.T, ns *topo.NS, ifname string, frames [][]byte) {
	t.Helper()
	fd := packetSocket(t, ns, ifname)
	defer unix.Close(fd)
	var ifindex int
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err == nil {
			ifindex = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Protocol: htons(unix.ETH_P_ALL), Halen: 6}); err != nil {
			t.Fatalf("inject: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// tampered returns a copy of a captured sealed frame with a sequence
// number far ahead (so that the replay window lets it through to the tag
// check) and one ciphertext bit flipped; the UDP checksum is cleared.
func tampered(frame []byte, k int) []byte {
	f := bytes.Clone(frame)
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	udp := ip[ihl:]
	udp[6], udp[7] = 0, 0
	p := udp[8:]
	seq := binary.BigEndian.Uint64(p[8:])
	binary.BigEndian.PutUint64(p[8:], seq+1000000+uint64(k))
	p[seal.HeaderLen+k%(len(p)-seal.HeaderLen)] ^= 0x20
	return f
}

// TestTamperAndReplay injects, on link 1 from A's side, changed copies and
// exact replays of sealed packets A sent during a transfer: B drops and
// counts every one, and the stream arrives unchanged.
func TestTamperAndReplay(t *testing.T) {
	e := newEnv(t, nil)
	const n = 25
	cp := startCaptureKeep(t, e.a.ns, e.tp.Uplinks[1].WANIf, nil, n)
	_, before := e.b.sess.Stats()
	injected := false
	e.streamTransfer(t, 16<<20, func(done int) {
		if injected || done < 8<<20 {
			return
		}
		got := cp.sealed()
		if len(got) < n {
			return
		}
		injected = true
		var frames [][]byte
		for k, f := range got {
			frames = append(frames, tampered(f, k), f)
		}
		inject(t, e.a.ns, e.tp.Uplinks[1].WANIf, frames)
	})
	if !injected {
		t.Fatal("no sealed packets captured to inject")
	}
	// Give the last injected frames time to cross the 20 ms link.
	time.Sleep(200 * time.Millisecond)
	_, after := e.b.sess.Stats()
	auth := after.Dropped.Auth - before.Dropped.Auth
	replay := after.Dropped.Replay - before.Dropped.Replay
	t.Logf("injected %d changed and %d replayed packets: B dropped %d failing authentication, %d replays (%v)", n, n, auth, replay, after.Dropped)
	if auth < n || replay < n {
		t.Errorf("B counted %d changed and %d replayed drops, want at least %d each", auth, replay, n)
	}
}
