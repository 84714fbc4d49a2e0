package engine

import (
	"encoding/binary"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Linux constants that the options code needs.
const (
	sockMinRcvbuf = 2304 // SOCK_MIN_RCVBUF on x86-64
	sockMinSndbuf = 4608 // SOCK_MIN_SNDBUF on x86-64
	// tcpFinTimeoutMax is TCP_FIN_TIMEOUT_MAX in seconds, the largest
	// TCP_LINGER2.
	tcpFinTimeoutMax = 120
	tcpInfoSize      = unix.SizeofTCPInfo
)

type optKey struct{ level, name int32 }

// sockOpts holds the Linux-visible values of options set by the app (what
// getsockopt must return), lazily allocated.
type sockOpts struct {
	vals map[optKey]int32
}

func (o *sockOpts) get(level, name int) (int32, bool) {
	v, ok := o.vals[optKey{int32(level), int32(name)}]
	return v, ok
}

func (o *sockOpts) set(level, name int, v int32) {
	if o.vals == nil {
		o.vals = make(map[optKey]int32, 2)
	}
	o.vals[optKey{int32(level), int32(name)}] = v
}

// inherited returns the values an accepted socket starts with: Linux
// clones the listener, options included, except TCP_DEFER_ACCEPT, which
// belongs to the listener's accept queue.
func (o *sockOpts) inherited() sockOpts {
	var c sockOpts
	for k, v := range o.vals {
		if k != (optKey{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT}) {
			c.set(int(k.level), int(k.name), v)
		}
	}
	return c
}

// Options accepted and remembered without a netstack effect, with defaults.
var storedSockOpts = map[int]int32{
	unix.SO_DEBUG: 0, unix.SO_DONTROUTE: 0, unix.SO_OOBINLINE: 0, unix.SO_RCVLOWAT: 1,
	unix.SO_PRIORITY: 0, unix.SO_TIMESTAMP: 0, unix.SO_TIMESTAMPNS: 0, unix.SO_PASSCRED: 0,
	unix.SO_ZEROCOPY: 0, unix.SO_BUSY_POLL: 0, unix.SO_INCOMING_CPU: -1, unix.SO_NO_CHECK: 0,
}

var storedIPOpts = map[int]int32{
	unix.IP_RECVERR: 0, unix.IP_PKTINFO: 0, unix.IP_MTU_DISCOVER: 1, unix.IP_FREEBIND: 0,
	unix.IP_BIND_ADDRESS_NO_PORT: 0, unix.IP_RECVTOS: 0, unix.IP_RECVTTL: 0, unix.IP_TRANSPARENT: 0,
	unix.IP_RECVORIGDSTADDR: 0,
}

var storedIPv6Opts = map[int]int32{
	unix.IPV6_RECVERR: 0, unix.IPV6_RECVPKTINFO: 0, unix.IPV6_MTU_DISCOVER: 1, unix.IPV6_RECVTCLASS: 0,
	unix.IPV6_RECVORIGDSTADDR: 0, unix.IPV6_RECVHOPLIMIT: 0,
}

func bool32(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

// secsToRetrans and retransToSecs mirror Linux's TCP_DEFER_ACCEPT rounding
// (initial timeout 1 s, doubling, capped at 120 s).
func secsToRetrans(secs int32) int32 {
	if secs <= 0 {
		return 0
	}
	timeout, period, res := int32(1), int32(1), int32(1)
	for secs > period && res < 255 {
		res++
		timeout <<= 1
		if timeout > 120 {
			timeout = 120
		}
		period += timeout
	}
	return res
}

func retransToSecs(r int32) int32 {
	if r <= 0 {
		return 0
	}
	timeout, period := int32(1), int32(1)
	for r--; r > 0; r-- {
		timeout <<= 1
		if timeout > 120 {
			timeout = 120
		}
		period += timeout
	}
	return period
}

// Setsockopt sets an option like setsockopt(2), with Linux's checks in
// Linux's order: SOL_SOCKET and IPPROTO_TCP options need at least 4 bytes
// (EINVAL; checked before the option name), IPPROTO_IP integer options take
// 4 bytes, 1 byte or none (= 0), unknown options and options of another
// protocol's level are ENOPROTOOPT, out-of-range values EINVAL. Read-only
// options (SO_TYPE, SO_ERROR, TCP_INFO...) are ENOPROTOOPT. SO_RCVTIMEO and
// SO_SNDTIMEO concern the app's fd and are applied by the shim, not here.
func (e *Engine) Setsockopt(id SockID, level, name int, val []byte) unix.Errno {
	s, errno := e.lookup(id)
	if errno != 0 {
		return errno
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch level {
	case unix.SOL_SOCKET:
		return s.setSocketOpt(name, val)
	case unix.IPPROTO_TCP:
		if s.typ != unix.SOCK_STREAM {
			return unix.ENOPROTOOPT
		}
		return s.setTCPOpt(name, val)
	case unix.IPPROTO_IP:
		return s.setIPOpt(name, val)
	case unix.IPPROTO_IPV6:
		if s.family != unix.AF_INET6 {
			return unix.ENOPROTOOPT
		}
		return s.setIPv6Opt(name, val)
	default:
		return unix.ENOPROTOOPT
	}
}

func (s *sock) setSocketOpt(name int, val []byte) unix.Errno {
	if name == unix.SO_BINDTODEVICE {
		return unix.ENOPROTOOPT
	}
	if len(val) < 4 {
		return unix.EINVAL
	}
	v := int32(binary.NativeEndian.Uint32(val))
	ops := s.ep.SocketOptions()
	switch name {
	case unix.SO_REUSEADDR:
		ops.SetReuseAddress(v != 0)
	case unix.SO_REUSEPORT:
		ops.SetReusePort(v != 0)
	case unix.SO_KEEPALIVE:
		ops.SetKeepAlive(v != 0)
	case unix.SO_BROADCAST:
		ops.SetBroadcast(v != 0)
	case unix.SO_LINGER:
		if len(val) < 8 {
			return unix.EINVAL
		}
		secs := int32(binary.NativeEndian.Uint32(val[4:]))
		ops.SetLinger(tcpip.LingerOption{Enabled: v != 0, Timeout: time.Duration(secs) * time.Second})
		s.o.set(unix.SOL_SOCKET, unix.SO_LINGER, v)
		s.o.set(unix.SOL_SOCKET, -unix.SO_LINGER, secs)
		return 0
	case unix.SO_RCVBUF, unix.SO_RCVBUFFORCE:
		// The FORCE variant is not capped by rmem_max; the shim has
		// checked CAP_NET_ADMIN (EPERM without it, as Linux).
		u := uint32(v)
		if name == unix.SO_RCVBUF && u > uint32(s.e.rmemMax) {
			u = uint32(s.e.rmemMax)
		}
		v = max(int32(min(u, 0x7fffffff/2))*2, sockMinRcvbuf)
		ops.SetReceiveBufferSize(int64(v), true)
		s.o.set(unix.SOL_SOCKET, unix.SO_RCVBUF, v)
		return 0
	case unix.SO_SNDBUF, unix.SO_SNDBUFFORCE:
		u := uint32(v)
		if name == unix.SO_SNDBUF && u > uint32(s.e.wmemMax) {
			u = uint32(s.e.wmemMax)
		}
		v = max(int32(min(u, 0x7fffffff/2))*2, sockMinSndbuf)
		ops.SetSendBufferSize(int64(v), true)
		s.o.set(unix.SOL_SOCKET, unix.SO_SNDBUF, v)
		return 0
	case unix.SO_RCVLOWAT:
		if v < 0 {
			v = 0x7fffffff
		}
		if v == 0 {
			v = 1
		}
		s.o.set(unix.SOL_SOCKET, name, v)
		return 0
	default:
		if _, ok := storedSockOpts[name]; !ok {
			return unix.ENOPROTOOPT
		}
		if name != unix.SO_PRIORITY && name != unix.SO_INCOMING_CPU {
			v = bool32(v != 0)
		}
		s.o.set(unix.SOL_SOCKET, name, v)
		if name == unix.SO_TIMESTAMP || name == unix.SO_TIMESTAMPNS {
			s.setStamp()
		}
		return 0
	}
	s.o.set(unix.SOL_SOCKET, name, bool32(v != 0))
	return 0
}

func (s *sock) setTCPOpt(name int, val []byte) unix.Errno {
	if name == unix.TCP_CONGESTION {
		cc := tcpip.CongestionControlOption(trimNul(val))
		return ErrnoOf(s.ep.SetSockOpt(&cc))
	}
	if len(val) < 4 {
		return unix.EINVAL
	}
	v := int32(binary.NativeEndian.Uint32(val))
	ops := s.ep.SocketOptions()
	switch name {
	case unix.TCP_NODELAY:
		ops.SetDelayOption(v == 0)
		v = bool32(v != 0)
	case unix.TCP_CORK:
		ops.SetCorkOption(v != 0)
		v = bool32(v != 0)
	case unix.TCP_QUICKACK:
		ops.SetQuickAck(v != 0)
		v = bool32(v != 0)
	case unix.TCP_KEEPIDLE, unix.TCP_KEEPINTVL:
		if v < 1 || v > 32767 {
			return unix.EINVAL
		}
		d := time.Duration(v) * time.Second
		var terr tcpip.Error
		if name == unix.TCP_KEEPIDLE {
			o := tcpip.KeepaliveIdleOption(d)
			terr = s.ep.SetSockOpt(&o)
		} else {
			o := tcpip.KeepaliveIntervalOption(d)
			terr = s.ep.SetSockOpt(&o)
		}
		if terr != nil {
			return ErrnoOf(terr)
		}
	case unix.TCP_KEEPCNT:
		if v < 1 || v > 127 {
			return unix.EINVAL
		}
		if terr := s.ep.SetSockOptInt(tcpip.KeepaliveCountOption, int(v)); terr != nil {
			return ErrnoOf(terr)
		}
	case unix.TCP_USER_TIMEOUT:
		if v < 0 {
			return unix.EINVAL
		}
		o := tcpip.TCPUserTimeoutOption(time.Duration(v) * time.Millisecond)
		if terr := s.ep.SetSockOpt(&o); terr != nil {
			return ErrnoOf(terr)
		}
	case unix.TCP_DEFER_ACCEPT:
		// Recorded with Linux's rounding, not applied: the netstack's
		// deferral drops a FIN that completes the handshake as it drops
		// a bare ACK, where Linux completes the connection on it. A
		// client that connects and closes without sending then sat in
		// FIN-WAIT-1, its connection undelivered until the timeout and
		// then held by the app waiting for a request. Delivering every
		// connection at once is what Linux does once the timeout has
		// passed; the app handles an idle connection either way.
		v = retransToSecs(secsToRetrans(v))
	case unix.TCP_SYNCNT:
		if v < 1 || v > 255 {
			return unix.EINVAL
		}
	case unix.TCP_MAXSEG:
		if v != 0 && (v < 88 || v > 65535-40) {
			return unix.EINVAL
		}
		if v != 0 {
			s.ep.SetSockOptInt(tcpip.MaxSegOption, int(v))
		}
	case unix.TCP_LINGER2:
		// Linux: negative is -1 (no FIN-WAIT-2 timeout of the
		// socket's own), above TCP_FIN_TIMEOUT_MAX (120 s) is 120,
		// 0 reads back as the sysctl's 60.
		switch {
		case v < 0:
			v = -1
		case v > tcpFinTimeoutMax:
			v = tcpFinTimeoutMax
		}
		if v > 0 {
			o := tcpip.TCPLingerTimeoutOption(time.Duration(v) * time.Second)
			s.ep.SetSockOpt(&o)
		}
	case unix.TCP_WINDOW_CLAMP:
		// Linux: 0 only on a closed socket, and a clamp below
		// SOCK_MIN_RCVBUF/2 is raised to it.
		if v == 0 && (s.state == stConnecting || s.state == stConnected || s.state == stListening) {
			return unix.EINVAL
		}
		if v != 0 && v < sockMinRcvbuf/2 {
			v = sockMinRcvbuf / 2
		}
	case unix.TCP_NOTSENT_LOWAT, unix.TCP_FASTOPEN, unix.TCP_FASTOPEN_CONNECT:
	default:
		return unix.ENOPROTOOPT
	}
	s.o.set(unix.IPPROTO_TCP, name, v)
	return 0
}

func trimNul(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// tcpMcastField reports whether name is one of the multicast fields a
// TCP socket keeps (as Linux's inet socket does) without using them.
func (s *sock) tcpMcastField(name int) bool {
	return s.typ == unix.SOCK_STREAM && (name == unix.IP_MULTICAST_TTL || name == unix.IP_MULTICAST_LOOP)
}

func (s *sock) setIPOpt(name int, val []byte) unix.Errno {
	if isMcastIPOpt(name) && !s.tcpMcastField(name) {
		return s.setIPMcastOpt(name, val)
	}
	_, stored := storedIPOpts[name]
	if s.tcpMcastField(name) {
		// A TCP socket keeps Linux's multicast fields without use:
		// the loop flag can be set, the TTL cannot (EINVAL).
		if name == unix.IP_MULTICAST_TTL || len(val) < 1 {
			return unix.EINVAL
		}
		stored = true
	}
	if name != unix.IP_TOS && name != unix.IP_TTL && !stored {
		return unix.ENOPROTOOPT
	}
	var v int32
	switch {
	case len(val) >= 4:
		v = int32(binary.NativeEndian.Uint32(val))
	case len(val) >= 1:
		v = int32(val[0])
	}
	switch name {
	case unix.IP_TTL:
		if len(val) < 1 {
			return unix.EINVAL
		}
		if v != -1 && (v < 1 || v > 255) {
			return unix.EINVAL
		}
		ttl := int(v)
		if v == -1 {
			ttl = 0 // netstack: use the default
		}
		if terr := s.ep.SetSockOptInt(tcpip.IPv4TTLOption, ttl); terr != nil {
			return ErrnoOf(terr)
		}
	case unix.IP_TOS:
		v &= 0xff
		if s.typ == unix.SOCK_STREAM {
			v &^= 3 // the ECN bits belong to TCP
		}
		if terr := s.ep.SetSockOptInt(tcpip.IPv4TOSOption, int(v)); terr != nil {
			return ErrnoOf(terr)
		}
	case unix.IP_MTU_DISCOVER:
		if v < 0 || v > 5 {
			return unix.EINVAL
		}
	default:
		v = bool32(v != 0)
		s.recvCtlOpt(unix.IPPROTO_IP, name, v != 0)
	}
	s.o.set(unix.IPPROTO_IP, name, v)
	return 0
}

func (s *sock) setIPv6Opt(name int, val []byte) unix.Errno {
	if isMcastIPv6Opt(name) {
		return s.setIPv6McastOpt(name, val)
	}
	_, stored := storedIPv6Opts[name]
	if name != unix.IPV6_V6ONLY && name != unix.IPV6_UNICAST_HOPS && name != unix.IPV6_TCLASS && !stored {
		return unix.ENOPROTOOPT
	}
	if len(val) < 4 {
		return unix.EINVAL
	}
	v := int32(binary.NativeEndian.Uint32(val))
	switch name {
	case unix.IPV6_V6ONLY:
		if fa, err := s.ep.GetLocalAddress(); err == nil && fa.Port != 0 {
			return unix.EINVAL
		}
		s.ep.SocketOptions().SetV6Only(v != 0)
		v = bool32(v != 0)
	case unix.IPV6_UNICAST_HOPS:
		if v < -1 || v > 255 {
			return unix.EINVAL
		}
		h := int(v)
		if v == -1 {
			h = -1
		}
		if terr := s.ep.SetSockOptInt(tcpip.IPv6HopLimitOption, h); terr != nil {
			return ErrnoOf(terr)
		}
	case unix.IPV6_TCLASS:
		if v < -1 || v > 255 {
			return unix.EINVAL
		}
		if v == -1 {
			v = 0
		}
		if terr := s.ep.SetSockOptInt(tcpip.IPv6TrafficClassOption, int(v)); terr != nil {
			return ErrnoOf(terr)
		}
	case unix.IPV6_MTU_DISCOVER:
		if v < 0 || v > 5 {
			return unix.EINVAL
		}
	default:
		v = bool32(v != 0)
		s.recvCtlOpt(unix.IPPROTO_IPV6, name, v != 0)
	}
	s.o.set(unix.IPPROTO_IPV6, name, v)
	return 0
}

// Getsockopt returns an option's value like getsockopt(2), truncated to
// maxLen exactly as Linux truncates (checked against the kernel in the
// tests): SOL_SOCKET, IPPROTO_TCP and IPPROTO_IP reject a negative maxLen
// with EINVAL and copy min(maxLen, size) bytes, except that IPPROTO_IP
// returns an integer as one byte when 0 < maxLen < 4 and the value fits;
// IPPROTO_IPV6 compares maxLen as unsigned (a negative one yields all 4
// bytes). SO_ERROR returns the pending error once and clears it.
// TCP_INFO is a struct tcp_info filled from netstack's TCPInfo.
func (e *Engine) Getsockopt(id SockID, level, name int, maxLen int) ([]byte, unix.Errno) {
	s, errno := e.lookup(id)
	if errno != 0 {
		return nil, errno
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch level {
	case unix.SOL_SOCKET:
		if maxLen < 0 {
			return nil, unix.EINVAL
		}
		b, errno := s.getSocketOpt(name)
		if errno != 0 {
			return nil, errno
		}
		return b[:min(len(b), maxLen)], 0
	case unix.IPPROTO_TCP:
		if s.typ != unix.SOCK_STREAM {
			return nil, s.foreignLevel()
		}
		if maxLen < 0 {
			return nil, unix.EINVAL
		}
		b, errno := s.getTCPOpt(name)
		if errno != 0 {
			return nil, errno
		}
		return b[:min(len(b), maxLen)], 0
	case unix.IPPROTO_IP:
		if maxLen < 0 {
			return nil, unix.EINVAL
		}
		if name == unix.IP_MULTICAST_IF {
			b, errno := s.getIPMcastOpt(name)
			if errno != 0 {
				return nil, errno
			}
			return b[:min(len(b), maxLen)], 0
		}
		v, errno := s.getIPOpt(name)
		if errno != 0 {
			return nil, errno
		}
		if maxLen > 0 && maxLen < 4 && v >= 0 && v <= 255 {
			return []byte{byte(v)}, 0
		}
		return int32Bytes(v)[:min(4, maxLen)], 0
	case unix.IPPROTO_IPV6:
		if s.family != unix.AF_INET6 {
			return nil, unix.EOPNOTSUPP
		}
		v, errno := s.getIPv6Opt(name)
		if errno != 0 {
			return nil, errno
		}
		if maxLen < 0 {
			maxLen = 4 // Linux compares the length as unsigned here
		}
		return int32Bytes(v)[:min(4, maxLen)], 0
	default:
		return nil, s.foreignLevel()
	}
}

// foreignLevel is getsockopt's errno for a level the socket's protocol does
// not own: IPv4 sockets end in ip_getsockopt (EOPNOTSUPP), IPv6 sockets in
// ipv6_getsockopt (ENOPROTOOPT).
func (s *sock) foreignLevel() unix.Errno {
	if s.family == unix.AF_INET {
		return unix.EOPNOTSUPP
	}
	return unix.ENOPROTOOPT
}

func int32Bytes(v int32) []byte {
	return binary.NativeEndian.AppendUint32(make([]byte, 0, 4), uint32(v))
}

func (s *sock) getSocketOpt(name int) ([]byte, unix.Errno) {
	ops := s.ep.SocketOptions()
	var v int32
	switch name {
	case unix.SO_TYPE:
		v = int32(s.typ)
	case unix.SO_PROTOCOL:
		v = int32(s.proto)
	case unix.SO_DOMAIN:
		v = int32(s.family)
	case unix.SO_ACCEPTCONN:
		v = bool32(s.state == stListening)
	case unix.SO_ERROR:
		v = int32(s.soErr)
		s.soErr = 0
		if v == 0 && s.state != stDone && s.state != stFailed {
			if err := s.ep.LastError(); err != nil {
				v = int32(ErrnoOf(err))
			}
		}
	case unix.SO_REUSEADDR:
		v = bool32(ops.GetReuseAddress())
	case unix.SO_REUSEPORT:
		v = bool32(ops.GetReusePort())
	case unix.SO_KEEPALIVE:
		v = bool32(ops.GetKeepAlive())
	case unix.SO_BROADCAST:
		v = bool32(ops.GetBroadcast())
	case unix.SO_LINGER:
		on, _ := s.o.get(unix.SOL_SOCKET, unix.SO_LINGER)
		secs, _ := s.o.get(unix.SOL_SOCKET, -unix.SO_LINGER)
		b := int32Bytes(on)
		return binary.NativeEndian.AppendUint32(b, uint32(secs)), 0
	case unix.SO_RCVBUF, unix.SO_SNDBUF:
		if x, ok := s.o.get(unix.SOL_SOCKET, name); ok {
			v = x
			break
		}
		// Linux defaults: tcp_rmem[1] / tcp_wmem[1], and the core
		// defaults for UDP.
		switch {
		case s.typ == unix.SOCK_DGRAM:
			v = 212992
		case name == unix.SO_RCVBUF:
			v = 131072
		default:
			v = 16384
		}
	default:
		def, ok := storedSockOpts[name]
		if !ok {
			return nil, unix.ENOPROTOOPT
		}
		if x, ok := s.o.get(unix.SOL_SOCKET, name); ok {
			def = x
		}
		v = def
	}
	return int32Bytes(v), 0
}

var tcpDefaults = map[int]int32{
	unix.TCP_NODELAY: 0, unix.TCP_CORK: 0, unix.TCP_QUICKACK: 1, unix.TCP_KEEPIDLE: 7200,
	unix.TCP_KEEPINTVL: 75, unix.TCP_KEEPCNT: 9, unix.TCP_USER_TIMEOUT: 0, unix.TCP_DEFER_ACCEPT: 0,
	unix.TCP_SYNCNT: 6, unix.TCP_MAXSEG: 536, unix.TCP_LINGER2: 60, unix.TCP_WINDOW_CLAMP: 0,
	unix.TCP_NOTSENT_LOWAT: 0, unix.TCP_FASTOPEN: 0, unix.TCP_FASTOPEN_CONNECT: 0,
}

func (s *sock) getTCPOpt(name int) ([]byte, unix.Errno) {
	switch name {
	case unix.TCP_INFO:
		return s.tcpInfo(), 0
	case unix.TCP_CONGESTION:
		var cc tcpip.CongestionControlOption
		if terr := s.ep.GetSockOpt(&cc); terr != nil {
			return nil, ErrnoOf(terr)
		}
		b := make([]byte, 16) // TCP_CA_NAME_MAX
		copy(b, cc)
		return b, 0
	case unix.TCP_NODELAY:
		return int32Bytes(bool32(!s.ep.SocketOptions().GetDelayOption())), 0
	case unix.TCP_MAXSEG:
		if s.state == stConnected {
			if v, terr := s.ep.GetSockOptInt(tcpip.MaxSegOption); terr == nil {
				return int32Bytes(int32(v)), 0
			}
		}
	}
	def, ok := tcpDefaults[name]
	if !ok {
		return nil, unix.ENOPROTOOPT
	}
	if x, ok := s.o.get(unix.IPPROTO_TCP, name); ok && !(name == unix.TCP_LINGER2 && x == 0) {
		def = x
	}
	return int32Bytes(def), 0
}

// tcpInfo fills a struct tcp_info (the running kernel's layout, x86-64)
// from netstack's TCPInfoOption.
func (s *sock) tcpInfo() []byte {
	b := make([]byte, tcpInfoSize)
	var ti tcpip.TCPInfoOption
	state := uint8(7) // TCP_CLOSE
	if s.state == stListening {
		state = 10
	}
	if terr := s.ep.GetSockOpt(&ti); terr == nil {
		if st := tcp.EndpointState(ti.State); st >= tcp.StateEstablished && st <= tcp.StateClosing {
			state = uint8(st)
		} else if st == tcp.StateConnecting {
			state = uint8(tcp.StateSynSent)
		}
	}
	b[0] = state
	b[1] = uint8(ti.CcState)
	le := binary.NativeEndian
	le.PutUint32(b[8:], uint32(ti.RTO/time.Microsecond))
	if mss, terr := s.ep.GetSockOptInt(tcpip.MaxSegOption); terr == nil {
		le.PutUint32(b[16:], uint32(mss)) // snd_mss
		le.PutUint32(b[20:], uint32(mss)) // rcv_mss
		le.PutUint32(b[92:], uint32(mss)) // advmss
	}
	le.PutUint32(b[68:], uint32(ti.RTT/time.Microsecond))    // rtt
	le.PutUint32(b[72:], uint32(ti.RTTVar/time.Microsecond)) // rttvar
	le.PutUint32(b[76:], ti.SndSsthresh)
	le.PutUint32(b[80:], ti.SndCwnd)
	if ti.ReorderSeen {
		le.PutUint32(b[96:], 3) // reordering: Linux's initial value once seen
	}
	return b
}

func (s *sock) getIPOpt(name int) (int32, unix.Errno) {
	if isMcastIPOpt(name) && !s.tcpMcastField(name) {
		b, errno := s.getIPMcastOpt(name)
		if errno != 0 {
			return 0, errno
		}
		return int32(binary.NativeEndian.Uint32(b)), 0
	}
	switch name {
	case unix.IP_TTL:
		if x, ok := s.o.get(unix.IPPROTO_IP, name); ok && x != -1 {
			return x, 0
		}
		return 64, 0
	case unix.IP_TOS:
		x, _ := s.o.get(unix.IPPROTO_IP, name)
		return x, 0
	case unix.IP_MULTICAST_TTL, unix.IP_MULTICAST_LOOP:
		if s.typ == unix.SOCK_STREAM {
			if x, ok := s.o.get(unix.IPPROTO_IP, name); ok {
				return x, 0
			}
			return 1, 0 // Linux's defaults: TTL 1, loop on
		}
	}
	def, ok := storedIPOpts[name]
	if !ok {
		return 0, unix.ENOPROTOOPT
	}
	if x, ok := s.o.get(unix.IPPROTO_IP, name); ok {
		def = x
	}
	return def, 0
}

func (s *sock) getIPv6Opt(name int) (int32, unix.Errno) {
	if isMcastIPv6Opt(name) {
		return s.getIPv6McastOpt(name)
	}
	switch name {
	case unix.IPV6_V6ONLY:
		return bool32(s.ep.SocketOptions().GetV6Only()), 0
	case unix.IPV6_UNICAST_HOPS:
		if x, ok := s.o.get(unix.IPPROTO_IPV6, name); ok && x != -1 {
			return x, 0
		}
		return 64, 0
	case unix.IPV6_TCLASS:
		x, _ := s.o.get(unix.IPPROTO_IPV6, name)
		return x, 0
	}
	def, ok := storedIPv6Opts[name]
	if !ok {
		return 0, unix.ENOPROTOOPT
	}
	if x, ok := s.o.get(unix.IPPROTO_IPV6, name); ok {
		def = x
	}
	return def, 0
}

// Ioctl serves the socket ioctls that concern the netstack side. It returns
// the ioctl's return value and the int it writes through its argument.
// FIONREAD/SIOCINQ returns the bytes held in the INS (the netstack receive
// queue; for UDP the size of the next datagram): the shim adds its own fd's
// FIONREAD. SIOCOUTQ returns 0 (the bytes the app wrote are in flight in the
// socketpair, which the shim can see) and SIOCATMARK 0 (no urgent data is
// ever delivered). A listening TCP socket yields EINVAL for SIOCINQ and
// SIOCOUTQ; any other request is ENOTTY, like Linux.
func (e *Engine) Ioctl(id SockID, req uint, arg []byte) (int64, []byte, unix.Errno) {
	s, errno := e.lookup(id)
	if errno != 0 {
		return -1, nil, errno
	}
	s.mu.Lock()
	st := s.state
	s.mu.Unlock()
	switch req {
	case unix.SIOCINQ:
		if s.typ == unix.SOCK_STREAM && st == stListening {
			return -1, nil, unix.EINVAL
		}
		v, terr := s.ep.GetSockOptInt(tcpip.ReceiveQueueSizeOption)
		if terr != nil {
			v = 0
		}
		return 0, int32Bytes(int32(v)), 0
	case unix.SIOCOUTQ:
		if s.typ == unix.SOCK_STREAM && st == stListening {
			return -1, nil, unix.EINVAL
		}
		return 0, int32Bytes(0), 0
	case unix.SIOCATMARK:
		if s.typ != unix.SOCK_STREAM {
			return -1, nil, unix.ENOTTY
		}
		return 0, int32Bytes(0), 0
	default:
		return -1, nil, unix.ENOTTY
	}
}
