package xdp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// BPFFS is where the BPF file system is mounted.
const BPFFS = "/sys/fs/bpf"

// IsBPFFS reports whether dir is on a BPF file system.
func IsBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC
}

// MountBPFFS mounts the BPF file system on BPFFS unless it is there.
func MountBPFFS() error {
	if IsBPFFS(BPFFS) {
		return nil
	}
	if err := os.MkdirAll(BPFFS, 0o700); err != nil {
		return fmt.Errorf("lb/xdp: %w", err)
	}
	if err := unix.Mount("bpf", BPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("lb/xdp: mount bpffs on %s: %w", BPFFS, err)
	}
	return nil
}

// pinLink is the name of the pinned XDP link in a pin directory, pinProg
// the program's.
const (
	pinLink = "link"
	pinProg = "prog"
)

// pinned lists the maps by their pinned names.
func (b *Balancer) pinned() []struct {
	name string
	m    **ebpf.Map
} {
	return []struct {
		name string
		m    **ebpf.Map
	}{
		{"vips", &b.vips}, {"est", &b.est}, {"new", &b.new}, {"frags", &b.frags}, {"ctl", &b.ctlMap},
		{"table", &b.table}, {"backends", &b.backends}, {"bstats", &b.bstats}, {"stats", &b.stats}, {"tunnels", &b.tunnels},
		{"cache", &b.cache},
	}
}

// takeOver loads the maps and program pinned in dir if all of them are
// there and the maps have the shapes specs give; it reports whether it did.
// A partial or mismatched pin directory is an error the caller resolves by
// removing it.
func (b *Balancer) takeOver(dir string, specs map[string]ebpf.MapSpec) (bool, error) {
	if _, err := os.Stat(filepath.Join(dir, pinProg)); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	for _, p := range b.pinned() {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, p.name), nil)
		if err != nil {
			return false, fmt.Errorf("load pinned map %s: %w", p.name, err)
		}
		*p.m = m
		s := specs[p.name]
		info, err := m.Info()
		if err != nil {
			return false, fmt.Errorf("pinned map %s: %w", p.name, err)
		}
		if info.Type != s.Type || info.KeySize != s.KeySize || info.ValueSize != s.ValueSize || info.MaxEntries != s.MaxEntries {
			return false, fmt.Errorf("pinned map %s is %v %d/%d/%d, want %v %d/%d/%d", p.name,
				info.Type, info.KeySize, info.ValueSize, info.MaxEntries, s.Type, s.KeySize, s.ValueSize, s.MaxEntries)
		}
	}
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, pinProg), nil)
	if err != nil {
		return false, fmt.Errorf("load pinned program: %w", err)
	}
	b.prog = prog
	if l, err := link.LoadPinnedLink(filepath.Join(dir, pinLink), nil); err == nil {
		b.links = append(b.links, l)
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("load pinned link: %w", err)
	}
	if err := b.replaceOlder(dir); err != nil {
		return false, err
	}
	if err := b.ctlMap.Lookup(uint32(0), &b.ctl); err != nil {
		return false, fmt.Errorf("read the control entry: %w", err)
	}
	binary.NativeEndian.PutUint32(b.ctl[ctlActive:], binary.NativeEndian.Uint32(b.ctl[ctlActive:])&1)
	// Backends the previous owner had: kept (their flows stay theirs)
	// until SetBackends names them or DropStale.
	b.stale = map[uint32]net.HardwareAddr{}
	var v [backendValue]byte
	for id := range uint32(b.cfg.MaxBackends) {
		if err := b.backends.Lookup(id, &v); err != nil {
			return false, fmt.Errorf("read backend %d: %w", id, err)
		}
		if v[beState] != stateDown {
			b.stale[id] = net.HardwareAddr(v[beMAC : beMAC+6 : beMAC+6])
		}
	}
	return true, nil
}

// replaceOlder loads this version's program on the taken-over maps and
// compares its tag (the kernel's hash of the instructions, map references
// left out) with the pinned one's: the same, it is dropped; else the
// pinned program is of another version and this one takes its place, in
// the pinned link (one atomic switch: no packet goes unsteered, the
// connection table stays) and in the pin.
func (b *Balancer) replaceOlder(dir string) error {
	mine, err := b.load()
	if err != nil {
		return err
	}
	mi, err := mine.Info()
	if err != nil {
		mine.Close()
		return fmt.Errorf("program info: %w", err)
	}
	pi, err := b.prog.Info()
	if err != nil {
		mine.Close()
		return fmt.Errorf("pinned program info: %w", err)
	}
	if mi.Tag == pi.Tag {
		return mine.Close()
	}
	for _, l := range b.links {
		if err := l.Update(mine); err != nil {
			mine.Close()
			return fmt.Errorf("swap the program of the pinned link: %w", err)
		}
	}
	p := filepath.Join(dir, pinProg)
	if err := os.Remove(p); err != nil {
		mine.Close()
		return fmt.Errorf("unpin the older program: %w", err)
	}
	if err := mine.Pin(p); err != nil {
		mine.Close()
		return fmt.Errorf("pin the program: %w", err)
	}
	b.prog.Close()
	b.prog = mine
	b.replaced = true
	return nil
}

// Replaced reports whether the balancer New took over ran a program of
// another version, which this one's replaced (see TookOver).
func (b *Balancer) Replaced() bool { return b.replaced }

// pin pins the maps and the program in dir.
func (b *Balancer) pin(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, p := range b.pinned() {
		if err := (*p.m).Pin(filepath.Join(dir, p.name)); err != nil {
			return fmt.Errorf("pin map %s: %w", p.name, err)
		}
	}
	if err := b.prog.Pin(filepath.Join(dir, pinProg)); err != nil {
		return fmt.Errorf("pin program: %w", err)
	}
	return nil
}

// TookOver reports whether New took over a balancer pinned in
// Config.PinDir (its connection table included) instead of loading one.
func (b *Balancer) TookOver() bool { return b.tookOver }

// DropStale marks down the backends a taken-over balancer had that no
// SetBackends since has named: their flows fall back to the table. A
// daemon calls it once it has re-adopted the INS it is going to.
func (b *Balancer) DropStale() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for id := range b.stale {
		if err := b.backends.Update(id, [backendValue]byte{}, ebpf.UpdateAny); err != nil {
			errs = append(errs, fmt.Errorf("lb/xdp: remove backend %d: %w", id, err))
			continue
		}
		delete(b.stale, id)
	}
	b.nextGen()
	errs = append(errs, b.writeCtl())
	return errors.Join(errs...)
}

// StaleSlot returns the id of a backend with frames to mac that a
// taken-over balancer had and no SetBackends has named since: giving the
// INS with that MAC the same id keeps its established flows its own.
func (b *Balancer) StaleSlot(mac net.HardwareAddr) (uint32, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, m := range b.stale {
		if bytes.Equal(m, mac) {
			return id, true
		}
	}
	return 0, false
}

// Release closes the balancer's descriptors but leaves what is pinned in
// Config.PinDir, attached program included, for the next New with that
// directory (what a killed daemon leaves behind). Without PinDir it is
// Close.
func (b *Balancer) Release() error {
	return b.close(false)
}
