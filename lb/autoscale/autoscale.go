// Package autoscale decides when a pool of INS behind a VIP grows or
// shrinks, from samples of its live connections and CPU per INS. It only
// decides; the daemon spawns, drains and stops INS.
//
// Damping keeps it from flapping: a condition must hold for a sustain time
// before it acts, every action starts a cooldown, and the pool shrinks only
// when the load, spread over one INS fewer, stays below a headroom fraction
// of the scale-out thresholds (so the shrink cannot itself trigger a grow).
// Every decision carries its reason.
package autoscale

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Config is an autoscaling policy, as in --autoscale min=2,max=20,conns=500.
type Config struct {
	// Min and Max bound the number of INS.
	Min, Max int
	// Conns is the live connections per INS above which the pool grows.
	Conns float64
	// CPU is the CPU per INS (1 = one core) above which the pool grows.
	CPU float64
	// Sustain is how long a grow or shrink condition must hold.
	Sustain time.Duration
	// Cooldown is the pause after an action.
	Cooldown time.Duration
	// Headroom is the fraction of Conns and CPU that the load spread over
	// one INS fewer must stay below for the pool to shrink.
	Headroom float64
	// Drain is how long a shrink waits for the drained INS's connections
	// to end before it stops the INS anyway.
	Drain time.Duration
}

// Defaults of ParseConfig.
var Defaults = Config{Min: 1, Max: 20, Conns: 1000, CPU: 0.8, Sustain: 5 * time.Second, Cooldown: 15 * time.Second, Headroom: 0.6, Drain: 30 * time.Second}

// ParseConfig reads "min=2,max=20,conns=500,cpu=0.7,sustain=5s,
// cooldown=15s,headroom=0.6,drain=30s"; missing keys take Defaults.
func ParseConfig(s string) (Config, error) {
	c := Defaults
	if strings.TrimSpace(s) == "" {
		return c, fmt.Errorf("autoscale: empty policy")
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || v == "" {
			return c, fmt.Errorf("autoscale: %q: want key=value", kv)
		}
		var err error
		switch k {
		case "min", "max":
			var n int
			n, err = strconv.Atoi(v)
			if err == nil && (n < 1 || n > 1000) {
				err = fmt.Errorf("out of 1..1000")
			}
			if k == "min" {
				c.Min = n
			} else {
				c.Max = n
			}
		case "conns", "cpu", "headroom":
			var f float64
			f, err = strconv.ParseFloat(v, 64)
			if err == nil && (math.IsNaN(f) || math.IsInf(f, 0) || f <= 0) {
				err = fmt.Errorf("not a positive number")
			}
			switch k {
			case "conns":
				c.Conns = f
			case "cpu":
				c.CPU = f
			default:
				if f >= 1 {
					err = fmt.Errorf("want a fraction below 1")
				}
				c.Headroom = f
			}
		case "sustain", "cooldown", "drain":
			var d time.Duration
			d, err = time.ParseDuration(v)
			if err == nil && (d < 0 || d > 24*time.Hour) {
				err = fmt.Errorf("out of 0..24h")
			}
			switch k {
			case "sustain":
				c.Sustain = d
			case "cooldown":
				c.Cooldown = d
			default:
				c.Drain = d
			}
		default:
			err = fmt.Errorf("unknown key")
		}
		if err != nil {
			return c, fmt.Errorf("autoscale: %s=%s: %v", k, v, err)
		}
	}
	if c.Min > c.Max {
		return c, fmt.Errorf("autoscale: min %d above max %d", c.Min, c.Max)
	}
	return c, nil
}

// String is the policy in ParseConfig's form.
func (c Config) String() string {
	return fmt.Sprintf("min=%d,max=%d,conns=%g,cpu=%g,sustain=%s,cooldown=%s,headroom=%g,drain=%s",
		c.Min, c.Max, c.Conns, c.CPU, c.Sustain, c.Cooldown, c.Headroom, c.Drain)
}

// Sample is the pool's load at one time: per INS that takes new flows
// (draining ones excluded), its live connections and CPU (cores).
type Sample struct {
	At    time.Time
	Conns []int
	CPU   []float64
}

// Action is what a decision asks for.
type Action int

// Actions.
const (
	Hold Action = iota
	Grow
	Shrink
)

func (a Action) String() string {
	return [...]string{"hold", "grow", "shrink"}[a]
}

// Decision is one answer of the Scaler.
type Decision struct {
	At     time.Time
	Action Action
	// Count is how many INS to spawn (Grow) or drain (Shrink).
	Count int
	// Victim is, for Shrink, the index in the sample of the INS to drain
	// (the one with the fewest connections).
	Victim int
	Reason string
}

// Scaler turns samples into decisions. It is not safe for concurrent use.
type Scaler struct {
	cfg        Config
	highSince  time.Time
	lowSince   time.Time
	lastAction time.Time
}

// New returns a Scaler for cfg.
func New(cfg Config) *Scaler { return &Scaler{cfg: cfg} }

// Observe takes a sample and decides.
func (s *Scaler) Observe(x Sample) Decision {
	c := s.cfg
	n := len(x.Conns)
	d := Decision{At: x.At, Victim: -1}
	if n < c.Min {
		d.Action, d.Count = Grow, c.Min-n
		d.Reason = fmt.Sprintf("%d INS below min %d", n, c.Min)
		return s.act(d)
	}
	if n > c.Max {
		d.Action, d.Count, d.Victim = Shrink, 1, leastLoaded(x.Conns)
		d.Reason = fmt.Sprintf("%d INS above max %d", n, c.Max)
		return s.act(d)
	}
	var conns, cpu float64
	for i := range n {
		conns += float64(x.Conns[i])
		if i < len(x.CPU) {
			cpu += x.CPU[i]
		}
	}
	perConns, perCPU := conns/float64(n), cpu/float64(n)
	high := perConns > c.Conns || perCPU > c.CPU
	// After one INS fewer the load must stay well below the thresholds.
	low := n > 1 && conns/float64(n-1) < c.Headroom*c.Conns && cpu/float64(n-1) < c.Headroom*c.CPU
	if high {
		if s.highSince.IsZero() {
			s.highSince = x.At
		}
	} else {
		s.highSince = time.Time{}
	}
	if low {
		if s.lowSince.IsZero() {
			s.lowSince = x.At
		}
	} else {
		s.lowSince = time.Time{}
	}
	load := fmt.Sprintf("%.0f conns and %.2f CPU per INS over %d INS", perConns, perCPU, n)
	switch {
	case !s.lastAction.IsZero() && x.At.Sub(s.lastAction) < c.Cooldown:
		d.Reason = fmt.Sprintf("cooldown (%s since the last action): %s", x.At.Sub(s.lastAction).Round(time.Millisecond), load)
	case high && n < c.Max && x.At.Sub(s.highSince) >= c.Sustain:
		want := int(math.Ceil(float64(n) * max(perConns/c.Conns, perCPU/c.CPU)))
		d.Action, d.Count = Grow, min(max(want-n, 1), c.Max-n)
		d.Reason = fmt.Sprintf("%s above conns=%g or cpu=%g for %s", load, c.Conns, c.CPU, x.At.Sub(s.highSince).Round(time.Millisecond))
		return s.act(d)
	case low && n > c.Min && x.At.Sub(s.lowSince) >= c.Sustain:
		d.Action, d.Count, d.Victim = Shrink, 1, leastLoaded(x.Conns)
		d.Reason = fmt.Sprintf("%s: one INS fewer stays below %g of the thresholds, for %s", load, c.Headroom, x.At.Sub(s.lowSince).Round(time.Millisecond))
		return s.act(d)
	case high && n >= c.Max:
		d.Reason = fmt.Sprintf("%s, at max %d", load, c.Max)
	default:
		d.Reason = load
	}
	return d
}

func (s *Scaler) act(d Decision) Decision {
	s.lastAction = d.At
	s.highSince, s.lowSince = time.Time{}, time.Time{}
	return d
}

func leastLoaded(conns []int) int {
	v := 0
	for i, c := range conns {
		if c < conns[v] {
			v = i
		}
	}
	return v
}
