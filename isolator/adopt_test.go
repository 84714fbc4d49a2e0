package isolator

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

func validState() daemonState {
	up := netstack.UplinkConfig{Name: "up0", Interface: "up0", Addr4: netip.MustParsePrefix("10.77.0.10/24")}
	ns := func(n string) *netns.NS { return &netns.NS{Name: n, Path: filepath.Join(netns.Dir, n)} }
	return daemonState{Version: stateVersion, DaemonPID: 100, DaemonStart: 5, INS: []insState{
		{ID: 1, PID: 200, Start: 7, NetNS: ns("mpins-100-5-1"), Uplinks: []netstack.UplinkConfig{up}},
		{ID: 2, PID: 201, Start: 8, NetNS: ns("mpins-100-5-2"), Uplinks: []netstack.UplinkConfig{up}},
	}}
}

// TestParseState: a state file is read back as written, and every field a
// successor acts on (ids, pids, the namespace it binds and deletes) is
// checked; a bad file is refused with a reason.
func TestParseState(t *testing.T) {
	b, err := json.Marshal(validState())
	if err != nil {
		t.Fatal(err)
	}
	st, err := parseState(b)
	if err != nil || len(st.INS) != 2 || st.INS[1].PID != 201 || st.INS[0].Uplinks[0].Addr4.String() != "10.77.0.10/24" {
		t.Fatalf("parseState of a valid file: %+v, %v", st, err)
	}
	for _, c := range []struct {
		name string
		edit func(*daemonState)
		want string
	}{
		{"version", func(s *daemonState) { s.Version = 99 }, "version 99"},
		{"id zero", func(s *daemonState) { s.INS[0].ID = 0 }, "INS id 0"},
		{"id twice", func(s *daemonState) { s.INS[1].ID = 1 }, "INS 1 twice"},
		{"pid 1", func(s *daemonState) { s.INS[0].PID = 1 }, "pid 1"},
		{"no namespace", func(s *daemonState) { s.INS[0].NetNS = nil }, "bad namespace"},
		{"namespace path elsewhere", func(s *daemonState) { s.INS[0].NetNS.Path = "/etc/passwd" }, "bad namespace"},
		{"namespace name with a slash", func(s *daemonState) {
			s.INS[0].NetNS = &netns.NS{Name: "../x", Path: filepath.Join(netns.Dir, "../x")}
		}, "bad namespace"},
		{"no uplinks", func(s *daemonState) { s.INS[1].Uplinks = nil }, "no uplinks"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := validState()
			c.edit(&s)
			b, _ := json.Marshal(s)
			if _, err := parseState(b); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("parseState: %v, want an error saying %q", err, c.want)
			}
		})
	}
	if _, err := parseState([]byte("{")); err == nil {
		t.Error("parseState of a cut file: no error")
	}
}

// FuzzParseState: no input makes parseState panic, and what it accepts has
// namespaces under netns.Dir only and distinct ids.
func FuzzParseState(f *testing.F) {
	b, _ := json.Marshal(validState())
	f.Add(b)
	f.Add([]byte(`{"version":1,"ins":[{"id":1,"pid":2,"netns":{"Name":"a","Path":"/var/run/netns/a"},"uplinks":[{}]}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseState(b)
		if err != nil {
			return
		}
		seen := map[int]bool{}
		for _, e := range st.INS {
			if seen[e.ID] || e.NetNS == nil || filepath.Dir(e.NetNS.Path) != netns.Dir {
				t.Fatalf("accepted %+v", e)
			}
			seen[e.ID] = true
		}
	})
}

// TestGroupOf: a group's id follows from its key alone (a rejoining group
// gets its old id), differs between keys, and is never a client id.
func TestGroupOf(t *testing.T) {
	seen := map[uint64]bool{}
	for k := uint64(1); k < 10000; k += 2 {
		g := groupOf(k)
		if g != groupOf(k) || g&(1<<63) == 0 || seen[g] {
			t.Fatalf("groupOf(%d) = %#x", k, g)
		}
		seen[g] = true
	}
}
