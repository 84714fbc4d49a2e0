// Package tune owns an INS's tunings: the keys an operator may set (buffer
// sizes, backlog, connections per source, SYN cookies), their parsing,
// defaults and merging, and applying them to a netstack and its engine. It
// holds no state of its own.
package tune

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/netflow/rules"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Tuning keys `isolator tune` accepts.
const (
	// KeyRcvBuf is the TCP receive buffer a new connection starts with
	// (bytes; receive buffer moderation grows it up to KeyRcvBufMax).
	KeyRcvBuf = "rcvbuf"
	// KeyRcvBufMax is the largest TCP receive buffer.
	KeyRcvBufMax = "rcvbuf-max"
	// KeySndBuf and KeySndBufMax are the send buffer's counterparts.
	KeySndBuf    = "sndbuf"
	KeySndBufMax = "sndbuf-max"
	// KeyBacklog caps the backlog of every listening socket (as Linux's
	// net.core.somaxconn); existing listeners are re-capped.
	KeyBacklog = "backlog"
	// KeyMaxConnPerSrc limits concurrent accepted connections per source
	// address; 0 means no limit. Enforced at accept: a connection over
	// the limit is reset (the peer sees RST right after its handshake).
	KeyMaxConnPerSrc = "max-conn-per-src"
	// KeySynCookies is "always" (answer every SYN with a cookie and keep
	// no state until the handshake completes) or "auto" (cookies only
	// once a listener's SYN queue overflows; the netstack cannot turn
	// them off entirely).
	KeySynCookies = "syn-cookies"
)

// Ranges of the tunings.
const (
	MinBuf       = 4 << 10
	MaxBuf       = 64 << 20
	MaxBufMax    = 256 << 20
	MaxBacklog   = 65535
	MaxConnLimit = 1_000_000
)

// Default as a value removes an override: the key goes back to the
// INS default (or to the `all` setting for a single INS).
const Default = "default"

// Tuning is a set of tuning overrides, key to canonical value (sizes in
// bytes). Keys absent keep their default.
type Tuning map[string]string

// Keys lists the keys, in display order.
var Keys = []string{KeyRcvBuf, KeyRcvBufMax, KeySndBuf, KeySndBufMax, KeyBacklog, KeyMaxConnPerSrc, KeySynCookies}

// Values are the effective tunings of an INS.
type Values struct {
	RcvBuf, RcvBufMax int
	SndBuf, SndBufMax int
	Backlog           int
	MaxConnPerSrc     int
	SynCookies        bool
}

// Base is what netstack.New and engine.New set (see netstack's tune and
// engine.MaxBacklog); a test checks that they agree.
var Base = Values{RcvBuf: 1 << 20, RcvBufMax: 8 << 20, SndBuf: 1 << 20, SndBufMax: 8 << 20, Backlog: engine.MaxBacklog}

// Parse reads key=value arguments into overrides, refusing unknown
// keys and values out of range. "key=default" is kept as Default so
// that Merge removes the override.
func Parse(args []string) (Tuning, error) {
	out := Tuning{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want key=value (keys: %s)", a, strings.Join(Keys, ", "))
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
	if v == Default {
		if !slices.Contains(Keys, k) {
			return "", fmt.Errorf("unknown key %q (keys: %s)", k, strings.Join(Keys, ", "))
		}
		return v, nil
	}
	switch k {
	case KeyRcvBuf, KeySndBuf, KeyRcvBufMax, KeySndBufMax:
		n, err := rules.ParseSize(v)
		if err != nil {
			return "", fmt.Errorf("%s: %w", k, err)
		}
		hi := uint64(MaxBuf)
		if k == KeyRcvBufMax || k == KeySndBufMax {
			hi = MaxBufMax
		}
		if n < MinBuf || n > hi {
			return "", fmt.Errorf("%s %s out of range %d..%d bytes", k, v, MinBuf, hi)
		}
		return strconv.FormatUint(n, 10), nil
	case KeyBacklog, KeyMaxConnPerSrc:
		n, err := strconv.ParseUint(v, 10, 32)
		lo, hi := uint64(1), uint64(MaxBacklog)
		if k == KeyMaxConnPerSrc {
			lo, hi = 0, MaxConnLimit
		}
		if err != nil || n < lo || n > hi {
			return "", fmt.Errorf("%s %q: want a whole number in %d..%d", k, v, lo, hi)
		}
		return strconv.FormatUint(n, 10), nil
	case KeySynCookies:
		switch v {
		case "always", "auto":
			return v, nil
		case "off", "never", "no", "false", "0":
			return "", fmt.Errorf("%s %q: the netstack always falls back to cookies when a SYN queue overflows; want always or auto", k, v)
		}
		return "", fmt.Errorf("%s %q: want always or auto", k, v)
	}
	return "", fmt.Errorf("unknown key %q (keys: %s)", k, strings.Join(Keys, ", "))
}

// Merge returns base with over applied: Default values delete keys.
func Merge(base, over Tuning) Tuning {
	out := make(Tuning, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if v == Default {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

// Values validates a whole set of overrides (as an INS would apply them)
// and returns the effective tunings.
func (t Tuning) Values() (Values, error) {
	v := Base
	for k, s := range t {
		cv, err := canonicalTune(k, s)
		if err != nil {
			return v, err
		}
		if cv == Default {
			return v, fmt.Errorf("%s: %q is not a value", k, Default)
		}
		n, _ := strconv.Atoi(cv)
		switch k {
		case KeyRcvBuf:
			v.RcvBuf = n
		case KeyRcvBufMax:
			v.RcvBufMax = n
		case KeySndBuf:
			v.SndBuf = n
		case KeySndBufMax:
			v.SndBufMax = n
		case KeyBacklog:
			v.Backlog = n
		case KeyMaxConnPerSrc:
			v.MaxConnPerSrc = n
		case KeySynCookies:
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
func (v Values) Map() map[string]string {
	cookies := "auto"
	if v.SynCookies {
		cookies = "always"
	}
	return map[string]string{
		KeyRcvBuf: strconv.Itoa(v.RcvBuf), KeyRcvBufMax: strconv.Itoa(v.RcvBufMax),
		KeySndBuf: strconv.Itoa(v.SndBuf), KeySndBufMax: strconv.Itoa(v.SndBufMax),
		KeyBacklog: strconv.Itoa(v.Backlog), KeyMaxConnPerSrc: strconv.Itoa(v.MaxConnPerSrc),
		KeySynCookies: cookies,
	}
}

// Apply sets v on the netstack ns (for new connections) and the engine eng
// (listeners and accepts; nil: none).
func Apply(ns *stack.Stack, eng *engine.Engine, v Values) error {
	cookies := tcpip.TCPAlwaysUseSynCookies(v.SynCookies)
	opts := []struct {
		what string
		opt  tcpip.SettableTransportProtocolOption
	}{
		{"receive buffer range", &tcpip.TCPReceiveBufferSizeRangeOption{Min: MinBuf, Default: v.RcvBuf, Max: v.RcvBufMax}},
		{"send buffer range", &tcpip.TCPSendBufferSizeRangeOption{Min: MinBuf, Default: v.SndBuf, Max: v.SndBufMax}},
		{"SYN cookies", &cookies},
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
