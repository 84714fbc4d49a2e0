package netns

// INS network namespaces carry their owner in their name,
// mpins-<pid>-<start>-<ins>: the pid and start time (clock ticks after boot,
// /proc/PID/stat field 22) of the daemon that made them, then the INS id. A
// daemon killed by SIGKILL cannot delete its namespaces; its INS outlive it
// and a successor adopts them, binding each namespace under its own name
// (Adopt). The next daemon deletes the namespaces whose owner is gone and
// in which no process runs any more, and only those: a pid that is running
// with the recorded start time is a live daemon whatever it is doing, and a
// recycled pid has another start time.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/procstat"
)

// netnsPrefix starts the name of every INS namespace.
const netnsPrefix = "mpins-"

// netnsOwner identifies the daemon process that made a namespace.
type netnsOwner struct {
	pid   int
	start uint64
}

// selfOwner is this process as a namespace owner.
var selfOwner = sync.OnceValues(func() (netnsOwner, error) {
	st, err := procstat.Self()
	if err != nil {
		return netnsOwner{}, fmt.Errorf("own start time: %w", err)
	}
	return netnsOwner{pid: os.Getpid(), start: st.StartTime}, nil
})

// netnsName is the name of INS insID's namespace made by owner o.
func netnsName(o netnsOwner, insID int) string {
	return netnsPrefix + strconv.Itoa(o.pid) + "-" + strconv.FormatUint(o.start, 10) + "-" + strconv.Itoa(insID)
}

// parseNetNSName recovers owner and INS id from a namespace name that
// netnsName made; ok is false for every other name (including those of
// older daemons, which did not record their owner and are left alone).
func parseNetNSName(name string) (o netnsOwner, insID int, ok bool) {
	rest, found := strings.CutPrefix(name, netnsPrefix)
	if !found {
		return netnsOwner{}, 0, false
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 3 {
		return netnsOwner{}, 0, false
	}
	for _, p := range parts {
		// Canonical decimal only, so that one owner has one spelling.
		if p == "" || len(p) > 20 || (len(p) > 1 && p[0] == '0') || strings.Trim(p, "0123456789") != "" {
			return netnsOwner{}, 0, false
		}
	}
	pid, err1 := strconv.Atoi(parts[0])
	start, err2 := strconv.ParseUint(parts[1], 10, 64)
	id, err3 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || pid <= 0 || pid > 1<<22 || id < 0 {
		return netnsOwner{}, 0, false
	}
	return netnsOwner{pid: pid, start: start}, id, true
}

// Reap deletes the INS namespaces left by daemons that are no longer
// running (see the naming above) and returns their names. Namespaces of
// live daemons, this one included, names it did not make, and namespaces a
// process still runs in (an INS that outlived its daemon and waits for a
// successor, or was adopted by one) are never touched. A namespace that cannot be deleted is reported in the error and
// the others are still reaped.
func Reap(ctx context.Context, log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.Default()
	}
	ents, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reap namespaces: %w", err)
	}
	self, err := selfOwner()
	if err != nil {
		return nil, fmt.Errorf("reap namespaces: %w", err)
	}
	alive := map[netnsOwner]bool{self: true}
	var used map[uint64]bool // network namespaces processes run in
	var reaped []string
	var errs []error
	for _, e := range ents {
		o, _, ok := parseNetNSName(e.Name())
		if !ok {
			continue
		}
		live, known := alive[o]
		if !known {
			live = procstat.Alive(o.pid, o.start)
			alive[o] = live
		}
		if live {
			continue
		}
		if used == nil {
			used = namespacesInUse()
		}
		if ino, ok := nsInode(Dir + "/" + e.Name()); ok && used[ino] {
			continue
		}
		if _, err := RunIP(ctx, "", "netns", "del", e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed namespace of a daemon that is gone", "netns", e.Name(), "owner_pid", o.pid)
		reaped = append(reaped, e.Name())
	}
	if err := errors.Join(errs...); err != nil {
		return reaped, fmt.Errorf("reap namespaces: %w", err)
	}
	return reaped, nil
}

// nsInode is the inode of the namespace file at path.
func nsInode(path string) (uint64, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}

// namespacesInUse returns the inodes of the network namespaces of every
// process.
func namespacesInUse() map[uint64]bool {
	used := map[uint64]bool{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return used
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if ino, ok := nsInode("/proc/" + e.Name() + "/ns/net"); ok {
			used[ino] = true
		}
	}
	return used
}

// Adopt names the network namespace process pid runs in as INS insID's of
// the calling daemon (mpins-<pid>-<start>-<insID>, see the naming above)
// and drops the name old it had under the daemon that died: a successor
// that takes over a running INS owns its namespace from then on, and no
// other daemon reaps it as a dead daemon's. The namespace is reached
// through /proc/PID/ns/net, so this works also where the dead daemon's
// mount of the old name is not visible (another mount namespace). links
// are the namespace's macvlans as they were recorded.
func Adopt(ctx context.Context, insID, pid int, old string, links []Link) (*NS, error) {
	owner, err := selfOwner()
	if err != nil {
		return nil, fmt.Errorf("adopt netns: %w", err)
	}
	n := &NS{Name: netnsName(owner, insID), Links: links, log: slog.Default().With("ins", insID)}
	n.Path = Dir + "/" + n.Name
	src := "/proc/" + strconv.Itoa(pid) + "/ns/net"
	if old == n.Name {
		return n, nil
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return nil, fmt.Errorf("adopt netns: %w", err)
	}
	f, err := os.OpenFile(n.Path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		return nil, fmt.Errorf("adopt netns %s: %w", n.Name, err)
	}
	f.Close()
	if err := unix.Mount(src, n.Path, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(n.Path)
		return nil, fmt.Errorf("adopt netns %s: bind %s: %w", n.Name, src, err)
	}
	if old != "" && validName(old) {
		if _, err := RunIP(ctx, "", "netns", "del", old); err != nil {
			// Gone already (reaped by another daemon, or its mount
			// not visible here and the file removed).
			n.log.Debug("adopt netns: old name", "netns", old, "err", err)
		}
	}
	return n, nil
}
