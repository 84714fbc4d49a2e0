// Package local runs real servers under libmpshim.so on one host with an
// isolator of several INS and checks how they place and reach sockets: a
// server that listens on the address of one INS gets its socket on that
// INS, whichever INS the socket was made on, and nginx's second listen(2)
// (the backlog update at every start) succeeds as on Linux.
package local

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// insAddrs returns the IPv4 address of each INS on its first uplink, by
// INS id order.
func insAddrs(t *testing.T, iso *harness.Isolator) []netip.Addr {
	t.Helper()
	infos, err := iso.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, in := range infos {
		if len(in.Uplinks) == 0 {
			t.Fatalf("INS %d has no uplink", in.ID)
		}
		p, err := netip.ParsePrefix(in.Uplinks[0].Addr4)
		if err != nil {
			t.Fatalf("INS %d: %v", in.ID, err)
		}
		out = append(out, p.Addr())
	}
	return out
}

// TestNginxListensOnSecondINS: nginx under the shim with `listen <address
// of INS 2>` and `listen <address of INS 1>` (ports of each) on an isolator
// with two INS starts, answers on both from the wan namespace, and logs no
// failed listen(2): each socket went to the INS that owns its address, and
// the backlog update nginx makes at start succeeded.
func TestNginxListensOnSecondINS(t *testing.T) {
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2})
	addrs := insAddrs(t, iso)
	if len(addrs) != 2 {
		t.Fatalf("%d INS, want 2", len(addrs))
	}
	files := harness.RandomFiles(map[string]int{"a.bin": 4 << 10})
	var listens strings.Builder
	// Several ports per address: a socket placed by load alone would land
	// on the wrong INS for about half of them.
	for port := 8081; port <= 8084; port++ {
		for _, a := range addrs {
			fmt.Fprintf(&listens, "        listen %s:%d;\n", a, port)
		}
	}
	n := harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso, Files: files,
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 1;
events { worker_connections 256; }
http {
    access_log off;
    server {
%s        root %s;
    }
}
`, listens.String(), root)
		},
	})
	for port := 8081; port <= 8084; port++ {
		for _, a := range addrs {
			harness.Fetch(t, tp.WAN, nil, fmt.Sprintf("http://%s:%d/a.bin", a, port), files["a.bin"])
		}
	}
	if log := n.ErrorLog(); strings.Contains(log, "listen() to") || strings.Contains(log, "bind() to") {
		t.Errorf("nginx logged a failed listen or bind:\n%s", log)
	}
}
