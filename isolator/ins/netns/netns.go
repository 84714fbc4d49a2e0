// Package netns owns the network namespace of each INS, as the daemon sets
// it up before the INS starts: the namespace, the macvlan children of the
// uplink interfaces moved into it, their sysctls, and the reaping of
// namespaces whose daemon is gone. It runs in the daemon, never in an INS,
// and knows nothing of netstacks or sockets.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is where iproute2 keeps named network namespaces.
const Dir = "/var/run/netns"

// HostUplink names one uplink interface of the daemon's namespace that an
// INS gets a macvlan child of.
type HostUplink struct {
	// Parent is the host interface in the daemon's namespace (hostNS).
	Parent string
	// Name is the interface name inside the INS namespace; "" means "up<i>".
	Name string
}

// Link describes one macvlan inside an INS namespace.
type Link struct {
	// Name is the interface name inside the INS namespace.
	Name string
	// Parent is the host interface it is a child of.
	Parent string
	// MAC is the macvlan's own hardware address; the INS stack uses it.
	MAC net.HardwareAddr
	// MTU is the interface MTU (inherited from the parent).
	MTU int
	// VirtualParent is true when the parent is a veth: frames from a local
	// kernel may then carry partial (offloaded) checksums, so the INS must
	// trust RX checksums on this uplink (UplinkConfig.RXChecksumOffload).
	VirtualParent bool
}

// NS is a network namespace prepared for one INS.
type NS struct {
	// Name is the iproute2 name (/var/run/netns/<Name>).
	Name string
	// Path is the bind-mount path of the namespace.
	Path string
	// Links are the macvlans, in the order of the HostUplinks.
	Links []Link
	log   *slog.Logger
}

// Prepare creates network namespace mpins-<pid>-<start>-<insID> (named
// after the calling daemon, see Reap) and gives it a
// macvlan child of each uplink's parent interface, which lives in namespace
// hostNS ("" is the namespace of the caller; the operator must ask for that
// explicitly). Each macvlan is created inside hostNS, moved into the INS
// namespace, renamed, and brought up with no kernel IP address and IPv6
// disabled, so the kernel of the INS namespace never answers for the INS
// and emits no autoconfiguration or DAD traffic; it gets a pfifo qdisc and
// forwarding is off in the namespace. The INS stack then owns the link by
// opening an AF_PACKET socket on it.
func Prepare(ctx context.Context, insID int, hostNS string, uplinks []HostUplink) (_ *NS, err error) {
	if insID < 0 {
		return nil, fmt.Errorf("prepare netns: negative INS id %d", insID)
	}
	if len(uplinks) == 0 {
		return nil, errors.New("prepare netns: no uplinks")
	}
	if hostNS != "" && !validName(hostNS) {
		return nil, fmt.Errorf("prepare netns: bad host namespace name %q", hostNS)
	}
	owner, err := selfOwner()
	if err != nil {
		return nil, fmt.Errorf("prepare netns: %w", err)
	}
	n := &NS{
		Name: netnsName(owner, insID),
		log:  slog.Default().With("ins", insID),
	}
	n.Path = filepath.Join(Dir, n.Name)
	if _, err := RunIP(ctx, "", "netns", "add", n.Name); err != nil {
		return nil, fmt.Errorf("prepare netns %s: %w", n.Name, err)
	}
	defer func() {
		if err != nil {
			_ = n.Close()
		}
	}()
	// Before any interface appears: no IPv6 on kernel interfaces by default
	// and no forwarding, so nothing the kernel does here leaks traffic.
	sysctls := map[string]string{
		"net/ipv6/conf/default/disable_ipv6": "1",
		"net/ipv6/conf/all/disable_ipv6":     "1",
		"net/ipv4/ip_forward":                "0",
		"net/ipv4/conf/all/forwarding":       "0",
		"net/ipv4/conf/default/forwarding":   "0",
	}
	if err := n.Do(func() error { return WriteSysctls(sysctls) }); err != nil {
		return nil, fmt.Errorf("prepare netns %s: %w", n.Name, err)
	}
	seen := map[string]bool{}
	for i, u := range uplinks {
		name := u.Name
		if name == "" {
			name = fmt.Sprintf("up%d", i)
		}
		if !ValidIfName(name) || !ValidIfName(u.Parent) {
			return nil, fmt.Errorf("prepare netns %s: bad interface name %q / parent %q", n.Name, name, u.Parent)
		}
		if seen[name] {
			return nil, fmt.Errorf("prepare netns %s: duplicate interface name %q", n.Name, name)
		}
		seen[name] = true
		l, err := n.addMacvlan(ctx, hostNS, u.Parent, name)
		if err != nil {
			return nil, fmt.Errorf("prepare netns %s: uplink %d (%s): %w", n.Name, i, u.Parent, err)
		}
		n.Links = append(n.Links, l)
	}
	n.log.Info("INS netns ready", "netns", n.Name, "links", len(n.Links))
	return n, nil
}

func (n *NS) addMacvlan(ctx context.Context, hostNS, parent, name string) (Link, error) {
	kind, err := linkKind(ctx, hostNS, parent)
	if err != nil {
		return Link{}, err
	}
	r, err := randHex(4)
	if err != nil {
		return Link{}, err
	}
	tmp := "mpv" + r // 11 chars, unique in hostNS while in transit
	// Mode private: the macvlan talks only to the wire through its parent,
	// never to sibling macvlans, and sibling broadcasts are not looped to
	// it. INS instances never need to talk to each other directly, so this
	// is the strongest isolation between INS on one uplink (bridge mode
	// would let one INS reach or flood another without touching the wire).
	if _, err := RunIP(ctx, hostNS, "link", "add", "link", parent, "name", tmp, "type", "macvlan", "mode", "private"); err != nil {
		return Link{}, err
	}
	if _, err := RunIP(ctx, hostNS, "link", "set", "dev", tmp, "netns", n.Name); err != nil {
		_, _ = RunIP(context.Background(), hostNS, "link", "del", "dev", tmp)
		return Link{}, err
	}
	// From here the macvlan is inside the namespace, as tmp or as name.
	cur := tmp
	ok := false
	defer func() {
		if !ok {
			_, _ = RunIP(context.Background(), n.Name, "link", "del", "dev", cur)
		}
	}()
	steps := [][]string{
		{"link", "set", "dev", tmp, "name", name},
		// No kernel-generated IPv6 link-local address either.
		{"link", "set", "dev", name, "addrgenmode", "none"},
	}
	for i, s := range steps {
		if _, err := RunIP(ctx, n.Name, s...); err != nil {
			return Link{}, err
		}
		if i == 0 {
			cur = name
		}
	}
	if err := n.Do(func() error {
		return WriteSysctls(map[string]string{
			"net/ipv6/conf/" + name + "/disable_ipv6": "1",
			"net/ipv4/conf/" + name + "/forwarding":   "0",
		})
	}); err != nil {
		return Link{}, err
	}
	// pfifo: a plain bounded FIFO; the INS stack does its own pacing and
	// queueing, and a fair-queueing qdisc would only add per-packet cost.
	if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.Name,
		"tc", "qdisc", "replace", "dev", name, "root", "pfifo").CombinedOutput(); err != nil {
		return Link{}, fmt.Errorf("tc qdisc on %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	if _, err := RunIP(ctx, n.Name, "link", "set", "dev", name, "up"); err != nil {
		return Link{}, err
	}
	info, err := linkShow(ctx, n.Name, name)
	if err != nil {
		return Link{}, err
	}
	mac, err := net.ParseMAC(info.Address)
	if err != nil {
		return Link{}, fmt.Errorf("macvlan %s: bad MAC %q: %w", name, info.Address, err)
	}
	ok = true
	return Link{Name: name, Parent: parent, MAC: mac, MTU: info.MTU, VirtualParent: kind == "veth"}, nil
}

// Do runs f on a locked OS thread that has joined the namespace, then
// returns the thread to its original namespace.
func (n *NS) Do(f func() error) error {
	return Do(n.Path, f)
}

// Close deletes the namespace and with it every macvlan inside.
func (n *NS) Close() error {
	if n == nil || n.Name == "" {
		return nil
	}
	if _, err := RunIP(context.Background(), "", "netns", "del", n.Name); err != nil {
		return fmt.Errorf("close netns %s: %w", n.Name, err)
	}
	return nil
}

// Do runs f on a locked OS thread inside the network namespace bound
// at path, then restores the thread. If the thread cannot be restored it is
// left locked so the Go runtime retires it instead of reusing it.
func Do(path string, f func() error) error {
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(target)
	runtime.LockOSThread()
	orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", path, err)
	}
	ferr := f()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Stay locked: the runtime terminates this thread when the
		// goroutine exits, so no other goroutine runs in the wrong ns.
		return errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// WriteSysctls writes /proc/sys entries; net/ entries resolve in the
// network namespace of the calling thread.
func WriteSysctls(kv map[string]string) error {
	for k, v := range kv {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(k, "/", "."), v, err)
		}
	}
	return nil
}

type ipLink struct {
	Address  string `json:"address"`
	MTU      int    `json:"mtu"`
	LinkType string `json:"link_type"`
	LinkInfo struct {
		InfoKind string `json:"info_kind"`
	} `json:"linkinfo"`
}

func linkShow(ctx context.Context, ns, dev string) (ipLink, error) {
	out, err := RunIP(ctx, ns, "-j", "-d", "link", "show", "dev", dev)
	if err != nil {
		return ipLink{}, err
	}
	var links []ipLink
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return ipLink{}, fmt.Errorf("parse ip link show %s: %v (%d links)", dev, err, len(links))
	}
	return links[0], nil
}

func linkKind(ctx context.Context, ns, dev string) (string, error) {
	l, err := linkShow(ctx, ns, dev)
	if err != nil {
		return "", err
	}
	return l.LinkInfo.InfoKind, nil
}

// RunIP runs ip(8), in namespace ns unless ns is "".
func RunIP(ctx context.Context, ns string, args ...string) ([]byte, error) {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func randHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random suffix: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// ValidIfName reports whether s can name a network interface: 1 to 15
// bytes of letters, digits, "-", "_" and ".", and not "." or "..".
func ValidIfName(s string) bool {
	return len(s) > 0 && len(s) < unix.IFNAMSIZ && validName(s)
}

// ValidName reports whether s is a namespace name this package accepts.
func ValidName(s string) bool { return validName(s) }

func validName(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
