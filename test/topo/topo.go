// Package topo builds the network topology that mpshim's integration tests,
// benchmarks and demo run in, entirely out of network namespaces that it
// creates and removes itself.
//
// A Topology has these namespaces (names are ID + suffix):
//
//	ID-wan   clients (wrk, curl, iperf3); the wan end of every uplink, with
//	         address .1 of the uplink's subnets
//	ID-gw    the gw end of every uplink, without addresses; the isolator runs
//	         here and hands macvlan children of the gw ends to its INS
//	ID-app   loopback only; the protected program runs here
//	ID-ln    the link emulator (internal): per uplink, the middle of the wire
//	ID-X     extra namespaces made with NewNS
//
// Uplink i is a wire wan:upI <-> ln:wI ~~ ln:gI <-> gw:upI, where <-> is a
// veth pair and ~~ a user-space relay in the ln namespace that applies
// delay, jitter and loss (the kernel here may lack sch_netem); rate limits
// are tbf qdiscs on ln:wI and ln:gI. So shaping applies to both directions
// and no qdisc is installed on the wan or gw interfaces themselves. With
// Config.Direct the uplink is one veth pair wan:upI <-> gw:upI instead.
// Uplink i uses 10.77.i.0/24 and fd77:i::/64.
//
// Nothing is created in the root namespace: veths are created inside the
// namespaces with their peer placed directly in the other one. IPv4 and IPv6
// forwarding are off and DAD is disabled in every namespace. Interface names
// are short and fixed because each namespace is private to one topology;
// namespace names are unique per topology, so topologies can coexist.
//
// Teardown happens on Close, in test Cleanup, on SIGINT/SIGTERM (the
// process then dies of the same signal), and for topologies whose owner
// died without any of those, on the next Reap (which Build runs first).
package topo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// MaxUplinks is the largest Config.Uplinks accepted.
const MaxUplinks = 200

// Namespace suffixes of the fixed namespaces.
const (
	SuffixWAN  = "wan"
	SuffixGW   = "gw"
	SuffixApp  = "app"
	suffixLink = "ln"
)

// Config describes a topology.
type Config struct {
	// Uplinks is the number K ≥ 1 of uplinks between wan and gw.
	Uplinks int
	// Shape optionally shapes uplink i with Shape[i]; missing entries and
	// zero values mean an unshaped link.
	Shape []Shape
	// NoIPv6 leaves the uplinks without IPv6 addresses (link-local
	// addresses remain).
	NoIPv6 bool
	// Direct makes every uplink one plain veth pair wan:upI <-> gw:upI,
	// without the emulator in between: for benchmarks, where the relay's
	// cost per frame would be measured along with the sides. Shape must
	// be empty; SetShape, SetUplinkDown and SetUplinkUp fail and Drops is
	// 0 on a direct topology.
	Direct bool
}

// Shape is the impairment of one uplink. Delay, jitter and loss apply
// independently to each direction, so a round trip sees twice the delay;
// frames are never reordered. RateMbit limits each direction separately.
type Shape struct {
	// Delay is the one-way delay added in each direction.
	Delay time.Duration
	// Jitter varies the delay uniformly within ±Jitter (order preserved).
	Jitter time.Duration
	// LossPercent drops this percentage (0–100) of frames per direction.
	LossPercent float64
	// RateMbit limits each direction to this many Mbit/s; 0 is unlimited.
	RateMbit float64
}

func (s Shape) validate() error {
	switch {
	case s.Delay < 0 || s.Jitter < 0:
		return fmt.Errorf("negative delay or jitter in %+v", s)
	case s.LossPercent < 0 || s.LossPercent > 100 || math.IsNaN(s.LossPercent):
		return fmt.Errorf("loss %v%% outside 0..100", s.LossPercent)
	case s.RateMbit < 0 || math.IsNaN(s.RateMbit) || math.IsInf(s.RateMbit, 0):
		return fmt.Errorf("bad rate %v Mbit/s", s.RateMbit)
	case s.RateMbit > 0 && s.RateMbit < 0.01:
		return fmt.Errorf("rate %v Mbit/s below 10 kbit/s", s.RateMbit)
	}
	return nil
}

func (s Shape) impair() impair {
	return impair{delay: s.Delay, jitter: s.Jitter, loss: s.LossPercent / 100}
}

// Uplink is one link between the wan and the gw namespace.
type Uplink struct {
	// Index is i, the uplink's position in Topology.Uplinks.
	Index int
	// WANIf is the interface name in the wan namespace ("upI").
	WANIf string
	// GWIf is the interface name in the gw namespace ("upI"); it has no
	// address. Make macvlan children (mode bridge) of it for INS.
	GWIf string
	// Subnet4 is 10.77.I.0/24; WANAddr4 (.1) is on the wan end.
	Subnet4  netip.Prefix
	WANAddr4 netip.Addr
	// Subnet6 is fd77:I::/64; WANAddr6 (::1) is on the wan end. Both are
	// invalid when Config.NoIPv6 is set.
	Subnet6  netip.Prefix
	WANAddr6 netip.Addr
}

// HostAddr4 is the n-th address for INS use on this uplink: 10.77.I.(10+n),
// 0 ≤ n ≤ 244. It panics outside that range.
func (u Uplink) HostAddr4(n int) netip.Addr {
	if n < 0 || n > 244 {
		panic(fmt.Sprintf("topo: HostAddr4(%d) outside 0..244", n))
	}
	a := u.Subnet4.Addr().As4()
	a[3] = byte(10 + n)
	return netip.AddrFrom4(a)
}

// HostAddr6 is the n-th IPv6 address for INS use: fd77:I::(10+n), n ≥ 0.
// It panics for negative n or when the uplink has no IPv6 subnet.
func (u Uplink) HostAddr6(n int) netip.Addr {
	if n < 0 || n > 0xffff-10 || !u.Subnet6.IsValid() {
		panic(fmt.Sprintf("topo: HostAddr6(%d) on uplink %d without IPv6 or out of range", n, u.Index))
	}
	a := u.Subnet6.Addr().As16()
	a[14], a[15] = byte((10+n)>>8), byte(10+n)
	return netip.AddrFrom16(a)
}

// Topology is one built test topology; see the package documentation.
type Topology struct {
	// ID is "mpt" plus a random hex string, the prefix of all namespace
	// names.
	ID string
	// WAN is the client namespace, GW the isolator's namespace, App the
	// loopback-only namespace of the protected program.
	WAN, GW, App *NS
	// Uplinks lists the uplinks, Uplinks[i].Index == i.
	Uplinks []Uplink

	link   *NS
	cfg    Config
	st     state
	mu     sync.Mutex
	closed bool
	wires  []*wire
	shapes []Shape
	procs  map[*Proc]struct{}

	closeOnce sync.Once
	closeErr  error
}

// RequireRoot skips the test unless it runs as root; with CI=true it fails
// the test instead, so that CI never silently skips namespace tests.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("test needs root for network namespaces, and CI=true forbids skipping: run the tests as root")
	}
	t.Skip("needs root for network namespaces")
}

// checkTools reports missing programs.
func checkTools() error {
	var missing []string
	for _, p := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s on PATH (Debian package iproute2)", strings.Join(missing, ", "))
	}
	return nil
}

// New builds a topology for test t and registers its teardown with
// t.Cleanup. Without root it skips (or fails under CI=true, see
// RequireRoot); it fails the test if the topology cannot be built. If the
// test failed, the cleanup logs the output of processes started in the
// topology.
func New(t testing.TB, cfg Config) *Topology {
	t.Helper()
	RequireRoot(t)
	if err := checkTools(); err != nil {
		t.Fatalf("topo: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topo, err := Build(ctx, cfg)
	if err != nil {
		t.Fatalf("topo: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			topo.logProcs(t)
		}
		if err := topo.Close(); err != nil {
			t.Errorf("topo: teardown: %v", err)
		}
	})
	return topo
}

// Build builds a topology for non-test use (benchmarks, demo). The caller
// must Close it; SIGINT and SIGTERM also tear it down. It needs root and
// iproute2. Leftovers of dead earlier runs are reaped first.
func Build(ctx context.Context, cfg Config) (*Topology, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("topo: building a topology needs root (network namespaces)")
	}
	if err := checkTools(); err != nil {
		return nil, fmt.Errorf("topo: %w", err)
	}
	if cfg.Uplinks < 1 || cfg.Uplinks > MaxUplinks {
		return nil, fmt.Errorf("topo: %d uplinks, want 1..%d", cfg.Uplinks, MaxUplinks)
	}
	if cfg.Direct && len(cfg.Shape) > 0 {
		return nil, errors.New("topo: a direct topology cannot shape its uplinks")
	}
	if len(cfg.Shape) > cfg.Uplinks {
		return nil, fmt.Errorf("topo: %d shapes for %d uplinks", len(cfg.Shape), cfg.Uplinks)
	}
	for i, s := range cfg.Shape {
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("topo: uplink %d: %w", i, err)
		}
	}
	if err := Reap(); err != nil {
		slog.Warn("topo: reaping leftovers", "err", err)
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	start, err := procStart(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("topo: own start time: %w", err)
	}
	t := &Topology{
		ID:     id,
		cfg:    cfg,
		procs:  map[*Proc]struct{}{},
		shapes: make([]Shape, cfg.Uplinks),
	}
	copy(t.shapes, cfg.Shape)
	t.WAN = &NS{Name: id + "-" + SuffixWAN, topo: t}
	t.GW = &NS{Name: id + "-" + SuffixGW, topo: t}
	t.App = &NS{Name: id + "-" + SuffixApp, topo: t}
	t.link = &NS{Name: id + "-" + suffixLink, topo: t}
	t.st = state{ID: id, PID: os.Getpid(), Start: start,
		Namespaces: []string{t.WAN.Name, t.GW.Name, t.App.Name, t.link.Name}}
	// The state file exists before anything it names, and the topology is
	// registered for the signal handler before the first namespace.
	if err := writeState(&t.st); err != nil {
		return nil, fmt.Errorf("topo: %w", err)
	}
	register(t)
	if err := t.build(ctx); err != nil {
		if cerr := t.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, fmt.Errorf("topo %s: %w", id, err)
	}
	slog.Debug("topo: built", "id", id, "uplinks", cfg.Uplinks)
	return t, nil
}

func newID() (string, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("topo: random id: %w", err)
	}
	return "mpt" + hex.EncodeToString(b[:]), nil
}

// ip runs the ip (or tc, when the first argument is "tc") command.
func ip(ctx context.Context, args ...string) error {
	prog := "ip"
	if len(args) > 0 && args[0] == "tc" {
		prog, args = "tc", args[1:]
	}
	out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", prog, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nsSysctls are set in every namespace before any link exists in it.
var nsSysctls = [][2]string{
	{"net.ipv4.ip_forward", "0"},
	{"net.ipv4.conf.all.forwarding", "0"},
	{"net.ipv4.conf.default.forwarding", "0"},
	{"net.ipv6.conf.all.forwarding", "0"},
	{"net.ipv6.conf.default.forwarding", "0"},
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
	{"net.ipv6.conf.all.accept_ra", "0"},
	{"net.ipv6.conf.default.accept_ra", "0"},
}

// addNS creates and configures the namespace ns.
func addNS(ctx context.Context, ns *NS, extra ...[2]string) error {
	if err := ip(ctx, "netns", "add", ns.Name); err != nil {
		return err
	}
	err := ns.Do(func() error {
		for _, kv := range append(nsSysctls, extra...) {
			if err := writeSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns.Name, err)
	}
	return ip(ctx, "-n", ns.Name, "link", "set", "lo", "up")
}

func (t *Topology) build(ctx context.Context) error {
	for _, ns := range []*NS{t.WAN, t.GW, t.App} {
		if err := addNS(ctx, ns); err != nil {
			return err
		}
	}
	// The emulator's namespace never speaks IPv6 itself.
	if err := addNS(ctx, t.link,
		[2]string{"net.ipv6.conf.all.disable_ipv6", "1"},
		[2]string{"net.ipv6.conf.default.disable_ipv6", "1"}); err != nil {
		return err
	}
	for i := range t.cfg.Uplinks {
		if err := t.addUplink(ctx, i); err != nil {
			return fmt.Errorf("uplink %d: %w", i, err)
		}
	}
	return nil
}

func (t *Topology) addUplink(ctx context.Context, i int) error {
	name := fmt.Sprintf("up%d", i)
	wIf, gIf := fmt.Sprintf("w%d", i), fmt.Sprintf("g%d", i)
	u := Uplink{
		Index:    i,
		WANIf:    name,
		GWIf:     name,
		Subnet4:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(i), 0}), 24),
		WANAddr4: netip.AddrFrom4([4]byte{10, 77, byte(i), 1}),
	}
	if !t.cfg.NoIPv6 {
		a := [16]byte{0xfd, 0x77, byte(i >> 8), byte(i)}
		u.Subnet6 = netip.PrefixFrom(netip.AddrFrom16(a), 64)
		a[15] = 1
		u.WANAddr6 = netip.AddrFrom16(a)
	}
	steps := [][]string{
		{"-n", t.WAN.Name, "link", "add", "name", name, "type", "veth", "peer", "name", wIf, "netns", t.link.Name},
		{"-n", t.GW.Name, "link", "add", "name", name, "type", "veth", "peer", "name", gIf, "netns", t.link.Name},
		{"-n", t.WAN.Name, "addr", "add", u.WANAddr4.String() + "/24", "dev", name},
	}
	if t.cfg.Direct {
		steps = [][]string{
			{"-n", t.WAN.Name, "link", "add", "name", name, "type", "veth", "peer", "name", name, "netns", t.GW.Name},
			{"-n", t.WAN.Name, "addr", "add", u.WANAddr4.String() + "/24", "dev", name},
		}
	}
	if u.WANAddr6.IsValid() {
		steps = append(steps, []string{"-n", t.WAN.Name, "addr", "add", u.WANAddr6.String() + "/64", "dev", name, "nodad"})
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return err
		}
	}
	if err := t.WAN.Do(func() error { return disableOffloads(name) }); err != nil {
		return fmt.Errorf("wan %s: %w", name, err)
	}
	if t.cfg.Direct {
		for _, s := range [][]string{
			{"-n", t.WAN.Name, "link", "set", name, "up"},
			{"-n", t.GW.Name, "link", "set", name, "up"},
		} {
			if err := ip(ctx, s...); err != nil {
				return err
			}
		}
		if err := waitSettled(ctx, t.WAN, name); err != nil {
			return err
		}
		t.Uplinks = append(t.Uplinks, u)
		return nil
	}
	for _, s := range [][]string{
		{"-n", t.link.Name, "link", "set", wIf, "promisc", "on", "up"},
		{"-n", t.link.Name, "link", "set", gIf, "promisc", "on", "up"},
		{"-n", t.WAN.Name, "link", "set", name, "up"},
		{"-n", t.GW.Name, "link", "set", name, "up"},
	} {
		if err := ip(ctx, s...); err != nil {
			return err
		}
	}
	w, err := startWire(t.link, wIf, gIf, t.shapes[i].impair())
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.wires = append(t.wires, w)
	t.mu.Unlock()
	if r := t.shapes[i].RateMbit; r > 0 {
		if err := t.setRate(ctx, i, r); err != nil {
			return err
		}
	}
	if err := waitSettled(ctx, t.WAN, name); err != nil {
		return err
	}
	t.Uplinks = append(t.Uplinks, u)
	return nil
}

// waitSettled waits until dev in ns is up with carrier and none of its
// addresses (the kernel's link-local one included) is still tentative, so
// a test can use the uplink as soon as Build returns.
func waitSettled(ctx context.Context, ns *NS, dev string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		out, err := ns.Run(ctx, "ip", "-o", "addr", "show", "dev", dev, "tentative")
		carrier, cerr := ns.Run(ctx, "cat", "/sys/class/net/"+dev+"/carrier")
		if err == nil && cerr == nil && strings.TrimSpace(out) == "" && strings.TrimSpace(carrier) == "1" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s in %s did not settle (carrier %q, tentative: %s): %w", dev, ns.Name, strings.TrimSpace(carrier), strings.TrimSpace(out), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// setRate installs (rate > 0) or removes the tbf qdiscs of uplink i.
func (t *Topology) setRate(ctx context.Context, i int, rateMbit float64) error {
	for _, dev := range []string{fmt.Sprintf("w%d", i), fmt.Sprintf("g%d", i)} {
		if rateMbit == 0 {
			err := ip(ctx, "tc", "-n", t.link.Name, "qdisc", "del", "dev", dev, "root")
			// Deleting the default qdisc fails harmlessly.
			if err != nil && !strings.Contains(err.Error(), "handle of zero") &&
				!strings.Contains(err.Error(), "No such file") &&
				!strings.Contains(err.Error(), "Invalid handle") {
				return err
			}
			continue
		}
		bps := rateMbit * 1e6
		// Burst: 5 ms at rate, at least a few full frames.
		burst := int(math.Max(bps/8*0.005, 16<<10))
		err := ip(ctx, "tc", "-n", t.link.Name, "qdisc", "replace", "dev", dev, "root", "tbf",
			"rate", fmt.Sprintf("%dbit", int64(bps)),
			"burst", fmt.Sprint(burst), "latency", "100ms")
		if err != nil {
			return err
		}
	}
	return nil
}

func (t *Topology) uplinkIndex(i int) error {
	if i < 0 || i >= len(t.Uplinks) {
		return fmt.Errorf("topo %s: no uplink %d (have %d)", t.ID, i, len(t.Uplinks))
	}
	return nil
}

// SetShape replaces the shaping of uplink i; the zero Shape removes it.
// Frames already in flight keep their departure time.
func (t *Topology) SetShape(i int, s Shape) error {
	if err := t.uplinkIndex(i); err != nil {
		return err
	}
	if err := s.validate(); err != nil {
		return fmt.Errorf("topo %s: uplink %d: %w", t.ID, i, err)
	}
	if t.cfg.Direct {
		return fmt.Errorf("topo %s: uplink %d is a direct veth pair: it cannot be shaped", t.ID, i)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("topo %s: closed", t.ID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s.RateMbit != t.shapes[i].RateMbit {
		if err := t.setRate(ctx, i, s.RateMbit); err != nil {
			return fmt.Errorf("topo %s: uplink %d: %w", t.ID, i, err)
		}
	}
	t.wires[i].set(s.impair())
	t.shapes[i] = s
	return nil
}

// SetUplinkDown cuts uplink i like a pulled cable: both veth ends in the
// link namespace go down, so the wan and gw ends lose carrier (they stay
// administratively up with their addresses), and macvlan children of the
// gw end, in whatever namespace, lose carrier too (NO-CARRIER, operstate DOWN). Nothing passes
// until SetUplinkUp.
func (t *Topology) SetUplinkDown(i int) error { return t.setUplink(i, "down") }

// SetUplinkUp restores uplink i after SetUplinkDown; carrier returns on
// both ends at once.
func (t *Topology) SetUplinkUp(i int) error { return t.setUplink(i, "up") }

func (t *Topology) setUplink(i int, state string) error {
	if err := t.uplinkIndex(i); err != nil {
		return err
	}
	if t.cfg.Direct {
		return fmt.Errorf("topo %s: uplink %d is a direct veth pair: no emulator to cut", t.ID, i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, dev := range []string{fmt.Sprintf("w%d", i), fmt.Sprintf("g%d", i)} {
		if err := ip(ctx, "-n", t.link.Name, "link", "set", dev, state); err != nil {
			return fmt.Errorf("topo %s: uplink %d %s: %w", t.ID, i, state, err)
		}
	}
	return nil
}

var suffixRE = regexp.MustCompile(`^[a-z0-9]{1,16}$`)

// NewNS creates an extra namespace ID-suffix owned by the topology:
// forwarding off, DAD off, lo up, removed on Close (after the processes in
// it are killed). suffix is 1–16 of [a-z0-9] and unique in the topology.
func (t *Topology) NewNS(suffix string) (*NS, error) {
	if !suffixRE.MatchString(suffix) {
		return nil, fmt.Errorf("topo %s: namespace suffix %q: want 1-16 of [a-z0-9]", t.ID, suffix)
	}
	ns := &NS{Name: t.ID + "-" + suffix, topo: t}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, fmt.Errorf("topo %s: closed", t.ID)
	}
	for _, n := range t.st.Namespaces {
		if n == ns.Name {
			t.mu.Unlock()
			return nil, fmt.Errorf("topo %s: namespace %s exists", t.ID, ns.Name)
		}
	}
	t.st.Namespaces = append(t.st.Namespaces, ns.Name)
	err := writeState(&t.st)
	t.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("topo %s: %w", t.ID, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := addNS(ctx, ns); err != nil {
		return nil, fmt.Errorf("topo %s: %w", t.ID, err)
	}
	return ns, nil
}

// Namespaces returns the names of all namespaces of the topology, the
// internal link namespace and NewNS ones included.
func (t *Topology) Namespaces() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.st.Namespaces...)
}

// Drops returns the number of frames the emulator of uplink i dropped
// (loss, full queue, link down, rate limiter full), both directions.
func (t *Topology) Drops(i int) uint64 {
	if t.uplinkIndex(i) != nil || t.cfg.Direct {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.wires[i].drops.Load()
}

func (t *Topology) addProc(p *Proc) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("topo %s: closed", t.ID)
	}
	t.procs[p] = struct{}{}
	return nil
}

func (t *Topology) removeProc(p *Proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.procs, p)
}

func (t *Topology) logProcs(tb testing.TB) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p := range t.procs {
		out := p.Output()
		if len(out) > 4096 {
			out = "…" + out[len(out)-4096:]
		}
		tb.Logf("topo %s: output of %s (pid %d):\n%s", t.ID, p.name, p.pid, out)
	}
}

// Close tears the topology down: started processes get SIGTERM and, after a
// grace period, SIGKILL (whole process group); any other process left in
// the topology's namespaces is killed; the emulator stops; the namespaces
// and with them all links are deleted; the state file is removed. Close is
// idempotent.
func (t *Topology) Close() error {
	t.closeOnce.Do(func() { t.closeErr = t.close() })
	return t.closeErr
}

func (t *Topology) close() error {
	t.mu.Lock()
	t.closed = true
	procs := make([]*Proc, 0, len(t.procs))
	for p := range t.procs {
		procs = append(procs, p)
	}
	wires := t.wires
	names := append([]string(nil), t.st.Namespaces...)
	t.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.pid == 0 {
				return
			}
			if err := p.Stop(); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, w := range wires {
		w.close()
	}
	if err := removeNamespaces(names); err != nil {
		// Keep the state file: a later Reap retries.
		errs = append(errs, err)
	} else if err := os.Remove(statePath(t.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	unregister(t)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("topo %s: close: %w", t.ID, err)
	}
	slog.Debug("topo: closed", "id", t.ID)
	return nil
}
