package ins

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/mpshim/mpshim/netflow/rules"
)

// Tuning keys `isolator tune` accepts.
const (
	// TuneRcvBuf is the TCP receive buffer a new connection starts with
	// (bytes; receive buffer moderation grows it up to TuneRcvBufMax).
	TuneRcvBuf = "rcvbuf"
	// TuneRcvBufMax is the largest TCP receive buffer.
	TuneRcvBufMax = "rcvbuf-max"
	// TuneSndBuf and TuneSndBufMax are the send buffer's counterparts.
	TuneSndBuf    = "sndbuf"
	TuneSndBufMax = "sndbuf-max"
	// TuneBacklog caps the backlog of every listening socket (as Linux's
	// net.core.somaxconn); existing listeners are re-capped.
	TuneBacklog = "backlog"
	// TuneMaxConnPerSrc limits concurrent accepted connections per source
	// address; 0 means no limit. Enforced at accept: a connection over
	// the limit is reset (the peer sees RST right after its handshake).
	TuneMaxConnPerSrc = "max-conn-per-src"
	// TuneSynCookies is "always" (answer every SYN with a cookie and keep
	// no state until the handshake completes) or "auto" (cookies only
	// once a listener's SYN queue overflows; the netstack cannot turn
	// them off entirely).
	TuneSynCookies = "syn-cookies"
)

// Ranges of the tunings.
const (
	MinTuneBuf       = 4 << 10
	MaxTuneBuf       = 64 << 20
	MaxTuneBufMax    = 256 << 20
	MaxTuneBacklog   = 65535
	MaxTuneConnLimit = 1_000_000
)

// TuneDefault as a value removes an override: the key goes back to the
// INS default (or to the `all` setting for a single INS).
const TuneDefault = "default"

// Tuning is a set of tuning overrides, key to canonical value (sizes in
// bytes). Keys absent keep their default.
type Tuning map[string]string

// TuneKeys lists the keys, in display order.
var TuneKeys = []string{TuneRcvBuf, TuneRcvBufMax, TuneSndBuf, TuneSndBufMax, TuneBacklog, TuneMaxConnPerSrc, TuneSynCookies}

// TuneValues are the effective tunings of an INS.
type TuneValues struct {
	RcvBuf, RcvBufMax int
	SndBuf, SndBufMax int
	Backlog           int
	MaxConnPerSrc     int
	SynCookies        bool
}

// baseTuning is what NewStack and NewEngine set (see Stack.tune and
// somaxconn); a test checks that they agree.
var baseTuning = TuneValues{RcvBuf: 1 << 20, RcvBufMax: 8 << 20, SndBuf: 1 << 20, SndBufMax: 8 << 20, Backlog: somaxconn}

// ParseTuning reads key=value arguments into overrides, refusing unknown
// keys and values out of range. "key=default" is kept as TuneDefault so
// that Merge removes the override.
func ParseTuning(args []string) (Tuning, error) {
	out := Tuning{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want key=value (keys: %s)", a, strings.Join(TuneKeys, ", "))
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s given twice", k)
		}
		cv, err := canonicalTune(k, v)
		if err != nil {
			return nil, err
		}
		out[k] = cv
	}
	return out, nil
}

// canonicalTune validates one value and returns its canonical form.
func canonicalTune(k, v string) (string, error) {
	if v == TuneDefault {
		if !slices.Contains(TuneKeys, k) {
			return "", fmt.Errorf("unknown key %q (keys: %s)", k, strings.Join(TuneKeys, ", "))
		}
		return v, nil
	}
	switch k {
	case TuneRcvBuf, TuneSndBuf, TuneRcvBufMax, TuneSndBufMax:
		n, err := rules.ParseSize(v)
		if err != nil {
			return "", fmt.Errorf("%s: %w", k, err)
		}
		hi := uint64(MaxTuneBuf)
		if k == TuneRcvBufMax || k == TuneSndBufMax {
			hi = MaxTuneBufMax
		}
		if n < MinTuneBuf || n > hi {
			return "", fmt.Errorf("%s %s out of range %d..%d bytes", k, v, MinTuneBuf, hi)
		}
		return strconv.FormatUint(n, 10), nil
	case TuneBacklog, TuneMaxConnPerSrc:
		n, err := strconv.ParseUint(v, 10, 32)
		lo, hi := uint64(1), uint64(MaxTuneBacklog)
		if k == TuneMaxConnPerSrc {
			lo, hi = 0, MaxTuneConnLimit
		}
		if err != nil || n < lo || n > hi {
			return "", fmt.Errorf("%s %q: want a whole number in %d..%d", k, v, lo, hi)
		}
		return strconv.FormatUint(n, 10), nil
	case TuneSynCookies:
		switch v {
		case "always", "auto":
			return v, nil
		case "off", "never", "no", "false", "0":
			return "", fmt.Errorf("%s %q: the netstack always falls back to cookies when a SYN queue overflows; want always or auto", k, v)
		}
		return "", fmt.Errorf("%s %q: want always or auto", k, v)
	}
	return "", fmt.Errorf("unknown key %q (keys: %s)", k, strings.Join(TuneKeys, ", "))
}

// Merge returns base with over applied: TuneDefault values delete keys.
func Merge(base, over Tuning) Tuning {
	out := make(Tuning, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if v == TuneDefault {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

// Values validates a whole set of overrides (as an INS would apply them)
// and returns the effective tunings.
func (t Tuning) Values() (TuneValues, error) {
	v := baseTuning
	for k, s := range t {
		cv, err := canonicalTune(k, s)
		if err != nil {
			return v, err
		}
		if cv == TuneDefault {
			return v, fmt.Errorf("%s: %q is not a value", k, TuneDefault)
		}
		n, _ := strconv.Atoi(cv)
		switch k {
		case TuneRcvBuf:
			v.RcvBuf = n
		case TuneRcvBufMax:
			v.RcvBufMax = n
		case TuneSndBuf:
			v.SndBuf = n
		case TuneSndBufMax:
			v.SndBufMax = n
		case TuneBacklog:
			v.Backlog = n
		case TuneMaxConnPerSrc:
			v.MaxConnPerSrc = n
		case TuneSynCookies:
			v.SynCookies = cv == "always"
		}
	}
	var errs []error
	if v.RcvBuf > v.RcvBufMax {
		errs = append(errs, fmt.Errorf("rcvbuf %d exceeds rcvbuf-max %d", v.RcvBuf, v.RcvBufMax))
	}
	if v.SndBuf > v.SndBufMax {
		errs = append(errs, fmt.Errorf("sndbuf %d exceeds sndbuf-max %d", v.SndBuf, v.SndBufMax))
	}
	return v, errors.Join(errs...)
}

// Map returns every key with its effective value.
func (v TuneValues) Map() map[string]string {
	cookies := "auto"
	if v.SynCookies {
		cookies = "always"
	}
	return map[string]string{
		TuneRcvBuf: strconv.Itoa(v.RcvBuf), TuneRcvBufMax: strconv.Itoa(v.RcvBufMax),
		TuneSndBuf: strconv.Itoa(v.SndBuf), TuneSndBufMax: strconv.Itoa(v.SndBufMax),
		TuneBacklog: strconv.Itoa(v.Backlog), TuneMaxConnPerSrc: strconv.Itoa(v.MaxConnPerSrc),
		TuneSynCookies: cookies,
	}
}

// applyTuning sets v on the stack (for new connections) and the engine
// (listeners and accepts).
func applyTuning(st *Stack, eng *Engine, v TuneValues) error {
	ns := st.Stack()
	opts := []struct {
		what string
		opt  tcpip.SettableTransportProtocolOption
	}{
		{"receive buffer range", &tcpip.TCPReceiveBufferSizeRangeOption{Min: MinTuneBuf, Default: v.RcvBuf, Max: v.RcvBufMax}},
		{"send buffer range", &tcpip.TCPSendBufferSizeRangeOption{Min: MinTuneBuf, Default: v.SndBuf, Max: v.SndBufMax}},
		{"SYN cookies", ptr(tcpip.TCPAlwaysUseSynCookies(v.SynCookies))},
	}
	for _, o := range opts {
		if err := ns.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); err != nil {
			return fmt.Errorf("set TCP %s: %s", o.what, err)
		}
	}
	if eng != nil {
		eng.SetBacklogCap(v.Backlog)
		eng.SetMaxConnPerSource(v.MaxConnPerSrc)
	}
	return nil
}
