package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
)

// Usage is what a served app and the isolator hold at one moment: the
// descriptors and resident memory of the app's processes, the daemon's
// memory, and each INS's memory and socket records.
type Usage struct {
	// AppFDs and AppRSS (KiB) are by pid.
	AppFDs, AppRSS map[int]int
	// DaemonRSS is the daemon's resident memory in KiB.
	DaemonRSS int
	// INS is by INS id.
	INS map[int]api.INSInfo
}

// Usage takes a snapshot of the app processes pids and of the daemon.
func (d *Isolator) Usage(pids []int) (Usage, error) {
	u := Usage{AppFDs: map[int]int{}, AppRSS: map[int]int{}, INS: map[int]api.INSInfo{}}
	for _, p := range pids {
		u.AppFDs[p], u.AppRSS[p] = FDs(p), RSSKiB(p)
	}
	u.DaemonRSS = RSSKiB(d.PID())
	infos, err := d.List()
	if err != nil {
		return u, err
	}
	for _, in := range infos {
		u.INS[in.ID] = in
	}
	return u, nil
}

// Limits bound the growth CheckUsage accepts between two snapshots.
type Limits struct {
	// FDs is the most descriptors an app process may gain.
	FDs int
	// AppRSS, DaemonRSS and INSRSS are in KiB; Pct (percent of the
	// earlier value) raises each when larger.
	AppRSS, DaemonRSS, INSRSS int
	Pct                       int
}

// DefaultLimits suit a load test whose earlier snapshot was taken after a
// warm-up run at the same concurrency: the allocators have grown to their
// working size, so what is left is noise of a few MiB in the Go processes
// and of pages in the app's.
var DefaultLimits = Limits{FDs: 2, AppRSS: 1024, DaemonRSS: 8 << 10, INSRSS: 8 << 10, Pct: 25}

func (l Limits) allow(base, abs int) int { return base + max(abs, base*l.Pct/100) }

// WaitSettled waits until every INS holds no more socket records than in
// base (the connections of a load run are released once the client and
// the app have closed them) and the app processes no more descriptors,
// then returns a new snapshot of pids. It fails t if the records do not
// come down within timeout; descriptors still up then are left to
// CheckUsage.
func (d *Isolator) WaitSettled(t testing.TB, base Usage, pids []int, timeout time.Duration) Usage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		u, err := d.Usage(pids)
		if err != nil {
			t.Fatal(err)
		}
		extra := 0
		for id, in := range u.INS {
			extra += max(0, in.Sockets-base.INS[id].Sockets)
		}
		// The app's descriptors settle too: a server may close its
		// side of finished connections a while later (Apache's event
		// MPM lingers on each close).
		extraFDs := 0
		for p, f0 := range base.AppFDs {
			if f1, ok := u.AppFDs[p]; ok {
				extraFDs += max(0, f1-f0)
			}
		}
		if extra == 0 && extraFDs == 0 {
			return u
		}
		if time.Now().After(deadline) {
			if extra == 0 {
				return u // CheckUsage judges the descriptors
			}
			t.Fatalf("%d socket records more than before the load %v after it ended: %s", extra, timeout, insSummary(u))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func insSummary(u Usage) string {
	var ids []int
	for id := range u.INS {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	var b strings.Builder
	for _, id := range ids {
		in := u.INS[id]
		fmt.Fprintf(&b, "INS %d: %d sockets, %d connected, RSS %d KiB; ", id, in.Sockets, in.Connections, in.RSS>>10)
	}
	return strings.TrimSuffix(b.String(), "; ")
}

// CheckUsage fails t when after holds more than lim allows over before:
// descriptors or memory of an app process present in both, the daemon's
// memory, an INS's memory or socket records. It logs every figure.
func CheckUsage(t testing.TB, before, after Usage, lim Limits) {
	t.Helper()
	var pids []int
	for p := range before.AppFDs {
		if _, ok := after.AppFDs[p]; ok {
			pids = append(pids, p)
		}
	}
	sort.Ints(pids)
	if len(pids) == 0 {
		t.Errorf("no app process lived through the load")
	}
	fdsUp, rssUp := 0, 0
	for _, p := range pids {
		f0, f1, r0, r1 := before.AppFDs[p], after.AppFDs[p], before.AppRSS[p], after.AppRSS[p]
		if f1 == 0 || r1 == 0 {
			continue // exited meanwhile
		}
		if f1 > f0+lim.FDs {
			t.Errorf("app process %d: %d descriptors after the load, %d before: %s", p, f1, f0, FDKinds(p))
		}
		if r1 > lim.allow(r0, lim.AppRSS) {
			t.Errorf("app process %d: RSS %d KiB after the load, %d before", p, r1, r0)
		}
		fdsUp, rssUp = max(fdsUp, f1-f0), max(rssUp, r1-r0)
	}
	t.Logf("%d app processes: largest growth %+d descriptors, %+d KiB", len(pids), fdsUp, rssUp)
	if after.DaemonRSS > lim.allow(before.DaemonRSS, lim.DaemonRSS) {
		t.Errorf("daemon RSS %d KiB after the load, %d before", after.DaemonRSS, before.DaemonRSS)
	}
	t.Logf("daemon RSS %d → %d KiB", before.DaemonRSS, after.DaemonRSS)
	for id, b := range before.INS {
		a, ok := after.INS[id]
		if !ok {
			t.Errorf("INS %d is gone after the load", id)
			continue
		}
		r0, r1 := int(b.RSS>>10), int(a.RSS>>10)
		if r1 > lim.allow(r0, lim.INSRSS) {
			t.Errorf("INS %d: RSS %d KiB after the load, %d before", id, r1, r0)
		}
		if a.Sockets > b.Sockets {
			t.Errorf("INS %d: %d socket records after the load, %d before", id, a.Sockets, b.Sockets)
		}
		t.Logf("INS %d: RSS %d → %d KiB, sockets %d → %d", id, r0, r1, b.Sockets, a.Sockets)
	}
}

// FDKinds summarises what pid's descriptors refer to ("socket" ×12,
// "/dev/null" ×3, …).
func FDKinds(pid int) string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	n := map[string]int{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if i := strings.IndexByte(l, ':'); i > 0 && strings.HasSuffix(l, "]") {
			l = l[:i]
		}
		n[l]++
	}
	var kinds []string
	for k, v := range n {
		kinds = append(kinds, fmt.Sprintf("%s ×%d", k, v))
	}
	sort.Strings(kinds)
	return strings.Join(kinds, ", ")
}
