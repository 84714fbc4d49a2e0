package netns

// INS network namespaces carry their owner in their name,
// mpins-<pid>-<start>-<ins>: the pid and start time (clock ticks after boot,
// /proc/PID/stat field 22) of the daemon that made them, then the INS id. A
// daemon killed by SIGKILL cannot delete its namespaces (its INS die with it
// by PDEATHSIG, the namespaces stay bound under /run/netns); the next daemon
// deletes those whose owner is gone, and only those: a pid that is running
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
// live daemons, this one included, and names it did not make are never
// touched. A namespace that cannot be deleted is reported in the error and
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
