package isolator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func nlmsg(typ uint16, body []byte) []byte {
	ne := binary.NativeEndian
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(body)+3)
	ne.PutUint32(b[0:4], uint32(nlmsgHdrLen+len(body)))
	ne.PutUint16(b[4:6], typ)
	b = append(b, body...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func rtattr(typ uint16, v []byte) []byte {
	ne := binary.NativeEndian
	b := make([]byte, 4, 4+len(v)+3)
	ne.PutUint16(b[0:2], uint16(4+len(v)))
	ne.PutUint16(b[2:4], typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func ifinfo(index int32, flags uint32, attrs ...[]byte) []byte {
	ne := binary.NativeEndian
	b := make([]byte, ifinfomsgLen)
	ne.PutUint32(b[4:8], uint32(index))
	ne.PutUint32(b[8:12], flags)
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func name(s string) []byte { return rtattr(unix.IFLA_IFNAME, append([]byte(s), 0)) }

func TestParseLinkMessages(t *testing.T) {
	const upRunning = unix.IFF_UP | unix.IFF_RUNNING | unix.IFF_BROADCAST
	mtu := rtattr(unix.IFLA_MTU, []byte{0xdc, 0x05, 0, 0})
	errMsg := func(e int32) []byte {
		b := make([]byte, 4+nlmsgHdrLen)
		binary.NativeEndian.PutUint32(b, uint32(e))
		return nlmsg(unix.NLMSG_ERROR, b)
	}
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	cases := []struct {
		name string
		in   []byte
		want []linkEvent
		done bool
		err  bool
	}{
		{"up", nlmsg(unix.RTM_NEWLINK, ifinfo(3, upRunning, mtu, name("up1"))), []linkEvent{{index: 3, name: "up1", up: true}}, false, false},
		{"no carrier", nlmsg(unix.RTM_NEWLINK, ifinfo(3, unix.IFF_UP, name("up1"), mtu)), []linkEvent{{index: 3, name: "up1"}}, false, false},
		{"admin down", nlmsg(unix.RTM_NEWLINK, ifinfo(4, unix.IFF_RUNNING, name("eth0"))), []linkEvent{{index: 4, name: "eth0"}}, false, false},
		{"deleted", nlmsg(unix.RTM_DELLINK, ifinfo(5, upRunning, name("g0"))), []linkEvent{{index: 5, name: "g0", gone: true}}, false, false},
		{"nested flag on type", nlmsg(unix.RTM_NEWLINK, ifinfo(6, upRunning, rtattr(unix.IFLA_IFNAME|0x8000, []byte("x\x00")))), []linkEvent{{index: 6, name: "x", up: true}}, false, false},
		{"dump of two then done", cat(
			nlmsg(unix.RTM_NEWLINK, ifinfo(1, upRunning, name("lo"))),
			nlmsg(unix.RTM_NEWLINK, ifinfo(2, unix.IFF_UP, name("up0"))),
			nlmsg(unix.NLMSG_DONE, []byte{0, 0, 0, 0})),
			[]linkEvent{{index: 1, name: "lo", up: true}, {index: 2, name: "up0"}}, true, false},
		{"other messages skipped", cat(nlmsg(unix.RTM_NEWADDR, []byte{1, 2, 3, 4, 5, 6, 7, 8}), nlmsg(unix.NLMSG_NOOP, nil)), nil, false, false},
		{"ack", errMsg(0), nil, false, false},
		{"error", errMsg(-int32(unix.EPERM)), nil, false, true},
		{"short header", []byte{1, 2, 3}, nil, false, true},
		{"length beyond datagram", func() []byte { b := nlmsg(unix.RTM_NEWLINK, ifinfo(1, 0, name("a"))); b[0] += 40; return b }(), nil, false, true},
		{"length below header", func() []byte { b := nlmsg(unix.RTM_NEWLINK, ifinfo(1, 0, name("a"))); b[0], b[1] = 8, 0; return b }(), nil, false, true},
		{"short ifinfomsg", nlmsg(unix.RTM_NEWLINK, []byte{0, 0, 0, 0}), nil, false, true},
		{"attribute beyond message", nlmsg(unix.RTM_NEWLINK, append(ifinfo(1, 0), 40, 0, 3, 0, 'a', 0, 0, 0)), nil, false, true},
		{"attribute length below header", nlmsg(unix.RTM_NEWLINK, append(ifinfo(1, 0), 2, 0, 3, 0)), nil, false, true},
		{"no name", nlmsg(unix.RTM_NEWLINK, ifinfo(1, upRunning, mtu)), nil, false, true},
		{"empty name", nlmsg(unix.RTM_NEWLINK, ifinfo(1, upRunning, rtattr(unix.IFLA_IFNAME, []byte{0}))), nil, false, true},
		{"name too long", nlmsg(unix.RTM_NEWLINK, ifinfo(1, upRunning, name("abcdefghijklmnop"))), nil, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, done, err := parseLinkMessages(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if tc.err {
				return
			}
			if done != tc.done || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+v done %v, want %+v done %v", got, done, tc.want, tc.done)
			}
		})
	}
}

func FuzzParseLinkMessages(f *testing.F) {
	f.Add(nlmsg(unix.RTM_NEWLINK, ifinfo(3, unix.IFF_UP|unix.IFF_RUNNING, name("up1"))))
	f.Add(append(nlmsg(unix.RTM_DELLINK, ifinfo(5, 0, name("g0"))), nlmsg(unix.NLMSG_DONE, []byte{0, 0, 0, 0})...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, _, err := parseLinkMessages(b)
		for _, ev := range evs {
			if ev.name == "" || len(ev.name) >= unix.IFNAMSIZ || (ev.gone && ev.up) {
				t.Fatalf("bad event %+v (err %v)", ev, err)
			}
		}
	})
}

// TestLinkWatch: the watch, opened in a namespace of its own, reports the
// interfaces there on its dump and then, as they happen, the loss and the
// return of a veth's carrier when its peer goes down and up.
func TestLinkWatch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	ns := fmt.Sprintf("mpt-lw-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("-n", ns, "link", "add", "wa", "type", "veth", "peer", "name", "wb")
	run("-n", ns, "link", "set", "wa", "up")
	run("-n", ns, "link", "set", "wb", "up")
	w, err := openLinkWatch(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if err := w.dump(); err != nil {
		t.Fatal(err)
	}
	events := make(chan linkEvent, 64)
	go func() {
		defer close(events)
		buf := make([]byte, 64<<10)
		for {
			n, err := w.read(buf)
			if err != nil {
				return
			}
			evs, _, _ := parseLinkMessages(buf[:n])
			for _, ev := range evs {
				events <- ev
			}
		}
	}()
	await := func(what string, match func(linkEvent) bool) time.Time {
		t.Helper()
		timeout := time.After(3 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("watch ended before %s", what)
				}
				if match(ev) {
					return time.Now()
				}
			case <-timeout:
				t.Fatalf("no event for %s within 3 s", what)
			}
		}
	}
	await("wa in the dump, with carrier", func(ev linkEvent) bool { return ev.name == "wa" && ev.up })
	t0 := time.Now()
	run("-n", ns, "link", "set", "wb", "down")
	at := await("wa losing carrier", func(ev linkEvent) bool { return ev.name == "wa" && !ev.up })
	t.Logf("carrier loss seen %v after `ip link set` began", at.Sub(t0).Round(time.Microsecond))
	run("-n", ns, "link", "set", "wb", "up")
	await("wa's carrier back", func(ev linkEvent) bool { return ev.name == "wa" && ev.up })
	run("-n", ns, "link", "del", "wa")
	await("wa deleted", func(ev linkEvent) bool { return ev.name == "wa" && ev.gone })
	w.close()
	for range events {
	}
	if _, err := w.read(make([]byte, 16)); err == nil || errors.Is(err, unix.EAGAIN) {
		t.Fatalf("read on a closed watch: %v", err)
	}
}
