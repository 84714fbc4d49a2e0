package isolator

// The daemon watches the carrier of the uplinks' host interfaces through
// rtnetlink (RTNLGRP_LINK) in their namespace and tells every INS at once
// when one changes, so new flows leave an uplink whose wire is gone within
// milliseconds instead of waiting for the INS's own checks (its macvlan's
// flags, read every probe interval, and gateway probes that take three
// losses). When the carrier returns, the INS's own checks decide again.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/netns"
)

// linkEvent is the state of one interface as an rtnetlink message gives it.
type linkEvent struct {
	index int32
	name  string
	up    bool // IFF_UP and IFF_RUNNING (administratively up, with carrier)
	gone  bool // RTM_DELLINK
}

// nlmsgHdrLen and ifinfomsgLen are the fixed parts of an RTM_*LINK message;
// nlaTypeMask strips the NLA_F_NESTED and NLA_F_NET_BYTEORDER flags from an
// attribute type.
const (
	nlmsgHdrLen  = unix.SizeofNlMsghdr
	ifinfomsgLen = unix.SizeofIfInfomsg
	nlaTypeMask  = 0x3fff
)

// parseLinkMessages parses one datagram read from an rtnetlink socket into
// the link events it carries. The datagram comes from the kernel, but it is
// parsed as untrusted bytes: every length is checked against what is left,
// and a malformed datagram is an error rather than a partial read past its
// end. done reports an NLMSG_DONE (the end of a dump).
func parseLinkMessages(b []byte) (evs []linkEvent, done bool, err error) {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return evs, done, fmt.Errorf("netlink: %d trailing bytes", len(b))
		}
		l := ne.Uint32(b[0:4])
		typ := ne.Uint16(b[4:6])
		if l < nlmsgHdrLen || uint64(l) > uint64(len(b)) {
			return evs, done, fmt.Errorf("netlink: message length %d of %d bytes left", l, len(b))
		}
		body := b[nlmsgHdrLen:l]
		switch typ {
		case unix.NLMSG_DONE:
			done = true
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return evs, done, errors.New("netlink: short error message")
			}
			if e := int32(ne.Uint32(body[0:4])); e != 0 {
				return evs, done, fmt.Errorf("netlink: %w", unix.Errno(-e))
			}
		case unix.RTM_NEWLINK, unix.RTM_DELLINK:
			ev, err := parseIfinfo(body)
			if err != nil {
				return evs, done, err
			}
			ev.gone = typ == unix.RTM_DELLINK
			if ev.gone {
				ev.up = false
			}
			evs = append(evs, ev)
		}
		// Messages are 4-byte aligned; the last one may end unpadded.
		next := (uint64(l) + 3) &^ 3
		if next > uint64(len(b)) {
			next = uint64(len(b))
		}
		b = b[next:]
	}
	return evs, done, nil
}

// parseIfinfo parses the body of an RTM_NEWLINK/RTM_DELLINK message: struct
// ifinfomsg and its attributes, of which only IFLA_IFNAME is kept.
func parseIfinfo(body []byte) (linkEvent, error) {
	ne := binary.NativeEndian
	if len(body) < ifinfomsgLen {
		return linkEvent{}, fmt.Errorf("netlink: link message of %d bytes", len(body))
	}
	flags := ne.Uint32(body[8:12])
	ev := linkEvent{
		index: int32(ne.Uint32(body[4:8])),
		up:    flags&unix.IFF_UP != 0 && flags&unix.IFF_RUNNING != 0,
	}
	attrs := body[ifinfomsgLen:]
	for len(attrs) >= unix.SizeofRtAttr {
		al := int(ne.Uint16(attrs[0:2]))
		at := ne.Uint16(attrs[2:4]) & nlaTypeMask
		if al < unix.SizeofRtAttr || al > len(attrs) {
			return linkEvent{}, fmt.Errorf("netlink: attribute length %d of %d bytes left", al, len(attrs))
		}
		if at == unix.IFLA_IFNAME {
			v := attrs[unix.SizeofRtAttr:al]
			for i, c := range v {
				if c == 0 {
					v = v[:i]
					break
				}
			}
			if len(v) == 0 || len(v) >= unix.IFNAMSIZ {
				return linkEvent{}, fmt.Errorf("netlink: interface name of %d bytes", len(v))
			}
			ev.name = string(v)
		}
		next := (al + 3) &^ 3
		if next > len(attrs) {
			next = len(attrs)
		}
		attrs = attrs[next:]
	}
	if ev.name == "" {
		return linkEvent{}, fmt.Errorf("netlink: link %d without a name", ev.index)
	}
	return ev, nil
}

// linkWatch is an rtnetlink socket subscribed to link changes.
type linkWatch struct {
	f   *os.File
	seq uint32
}

// openLinkWatch opens the socket in network namespace ns ("" is the
// daemon's own); it keeps watching that namespace from any thread.
func openLinkWatch(ns string) (*linkWatch, error) {
	open := func() (int, error) {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		if err != nil {
			return -1, fmt.Errorf("netlink socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("netlink bind RTMGRP_LINK: %w", err)
		}
		// Room for a burst of events (a dump of many interfaces, or many
		// changes at once); an overflow is survived by a new dump.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20)
		return fd, nil
	}
	fd := -1
	var err error
	if ns == "" {
		fd, err = open()
	} else {
		res := make(chan error, 1)
		go func() {
			res <- netns.Do(nsPath(ns), func() (err error) { fd, err = open(); return err })
		}()
		err = <-res
		if err != nil && fd >= 0 {
			unix.Close(fd)
		}
	}
	if err != nil {
		return nil, err
	}
	return &linkWatch{f: os.NewFile(uintptr(fd), "rtnetlink")}, nil
}

// dump asks for the state of every interface (answered on the socket like
// events, ending with NLMSG_DONE).
func (w *linkWatch) dump() error {
	w.seq++
	req := make([]byte, nlmsgHdrLen+ifinfomsgLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:4], uint32(len(req)))
	ne.PutUint16(req[4:6], unix.RTM_GETLINK)
	ne.PutUint16(req[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:12], w.seq)
	req[nlmsgHdrLen] = unix.AF_UNSPEC
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	}); err != nil {
		return fmt.Errorf("netlink dump request: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("netlink dump request: %w", serr)
	}
	return nil
}

// read waits for the next datagram; it fails once the watch is closed.
func (w *linkWatch) read(buf []byte) (int, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
		return rerr != unix.EAGAIN
	}); err != nil {
		return 0, err
	}
	return n, rerr
}

func (w *linkWatch) close() error { return w.f.Close() }

// watchCarrier follows the carrier of the host interfaces until ctx ends. If
// rtnetlink cannot be used the INS still notice a dead uplink by their own
// checks; that is logged once.
func (d *Daemon) watchCarrier(ctx context.Context) {
	w, err := openLinkWatch(d.cfg.NetNS)
	if err != nil {
		d.log.Warn("carrier watch unavailable; uplinks go down by the INS health checks only", "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() { w.close() })
	defer stop()
	if err := w.dump(); err != nil {
		d.log.Warn("carrier watch: initial state", "err", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := w.read(buf)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, unix.ENOBUFS) {
			// Events were lost: ask for the whole state again.
			d.log.Warn("carrier watch: events lost; reading the state again")
			if err := w.dump(); err != nil {
				d.log.Warn("carrier watch: dump", "err", err)
			}
			continue
		}
		if err != nil {
			d.log.Warn("carrier watch stopped", "err", err)
			return
		}
		evs, _, perr := parseLinkMessages(buf[:n])
		if perr != nil {
			d.log.Debug("carrier watch: message", "err", perr)
		}
		for _, ev := range evs {
			d.observeLink(ev)
		}
	}
}

// observeLink records an interface's state; a carrier change of an
// uplink's interface is logged and pushed to every INS.
func (d *Daemon) observeLink(ev linkEvent) {
	d.mu.Lock()
	wasDown := d.linkDown[ev.name]
	if ev.up {
		delete(d.linkDown, ev.name)
	} else {
		d.linkDown[ev.name] = true
	}
	var changed []string
	for _, u := range d.uplinks {
		if u.cfg.Interface == ev.name && u.parentDown == ev.up {
			u.parentDown = !ev.up
			changed = append(changed, u.cfg.Name)
		}
	}
	procs := make([]*insProc, 0, len(d.ins))
	for _, p := range d.ins {
		procs = append(procs, p)
	}
	d.mu.Unlock()
	if len(changed) == 0 {
		return
	}
	for _, p := range procs {
		p.kickCarrier()
	}
	d.log.Info("uplink carrier", "interface", ev.name, "carrier", ev.up, "uplinks", changed, "was_down", wasDown, "ins", len(procs))
}

// kickCarrier asks the INS's carrier sync to run; it never blocks.
func (p *insProc) kickCarrier() {
	select {
	case p.carrierKick <- struct{}{}:
	default:
	}
}

// syncCarrier keeps the parent carrier the INS knows for each of its
// uplinks equal to the daemon's view, one request at a time and always
// with the latest state, until the INS exits. A request that fails is
// retried shortly.
func (d *Daemon) syncCarrier(p *insProc) {
	told := map[*uplinkState]bool{} // parent down, as last told; absent: up
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-p.carrierKick:
		case <-retry.C:
		}
		p.upMu.Lock()
		mine := make([]*uplinkState, len(p.ups))
		for i, x := range p.ups {
			mine[i] = x.u
		}
		p.upMu.Unlock()
		d.mu.Lock()
		want := make(map[*uplinkState]bool, len(mine))
		for _, u := range mine {
			want[u] = u.parentDown
		}
		d.mu.Unlock()
		for u := range told {
			if _, ok := want[u]; !ok {
				delete(told, u)
			}
		}
		failed := false
		for u, down := range want {
			if told[u] == down {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := p.manageUplink(ctx, ins.ManageUplinkCarrier, ins.UplinkOp{Name: u.cfg.Name, Up: !down})
			cancel()
			if err != nil {
				p.log.Debug("parent carrier to INS", "uplink", u.cfg.Name, "err", err)
				failed = true
				continue
			}
			told[u] = down
		}
		if failed {
			retry.Reset(200 * time.Millisecond)
		}
	}
}
