// Package local runs real servers under libmpshim.so on one host with an
// isolator of several INS and checks that they place and reach each other's
// sockets through the INS: a server that listens on the address of one INS
// gets its socket on that INS, whichever INS the socket was made on;
// nginx's second listen(2) (the backlog update at every start) succeeds as
// on Linux; a proxy reaches its upstream, and a redis replica its primary,
// by an INS address (delivered inside one INS or between two INS) and by
// loopback with MPSHIM_LOOPBACK=ins.
package local

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// shimEnv is the environment of a program under the shim served by iso.
func shimEnv(t *testing.T, iso *harness.Isolator, extra ...string) []string {
	return append(append(os.Environ(), "LD_PRELOAD="+harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+iso.Socket), extra...)
}

// setup2 builds a one-uplink topology with an isolator of two INS and
// returns their addresses.
func setup2(t *testing.T) (*topo.Topology, *harness.Isolator, []netip.Addr) {
	t.Helper()
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2})
	addrs := insAddrs(t, iso)
	if len(addrs) != 2 {
		t.Fatalf("%d INS, want 2", len(addrs))
	}
	return tp, iso, addrs
}

// upstreamNginx starts an nginx under the shim serving files on port 8080
// of every address (a wildcard listener, on every INS).
func upstreamNginx(t *testing.T, tp *topo.Topology, iso *harness.Isolator, files map[string][]byte) {
	t.Helper()
	harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso, Files: files,
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 1;
events { worker_connections 256; }
http {
    access_log off;
    server {
        listen 8080;
        root %s;
    }
}
`, root)
		},
	})
}

// TestHAProxyInFrontOfNginx: haproxy under the shim, listening on port 80
// of every INS, balances over an nginx under the shim on the same host,
// named by the address of each INS: whichever INS haproxy's upstream socket
// lands on, the connection reaches nginx (inside one INS, or from one INS
// to the other). Every request from the wan namespace is answered with the
// upstream's document.
func TestHAProxyInFrontOfNginx(t *testing.T) {
	tp, iso, addrs := setup2(t)
	harness.NeedFiles(t, "/usr/sbin/haproxy")
	files := harness.RandomFiles(map[string]int{"b.bin": 64 << 10})
	upstreamNginx(t, tp, iso, files)
	dir := t.TempDir()
	var servers strings.Builder
	for i, a := range addrs {
		fmt.Fprintf(&servers, "    server up%d %s:8080\n", i, a)
	}
	cfg := fmt.Sprintf(`global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind :80
    default_backend be
backend be
    balance roundrobin
%s`, servers.String())
	conf := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := tp.App.StartEnv(context.Background(), shimEnv(t, iso), "/usr/sbin/haproxy", "-db", "-f", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	waitFetch(t, tp.WAN, nil, fmt.Sprintf("http://%s/b.bin", addrs[0]), p)
	// Round robin over both upstream addresses, from both INS.
	for i := 0; i < 8; i++ {
		harness.Fetch(t, tp.WAN, nil, fmt.Sprintf("http://%s/b.bin", addrs[i%2]), files["b.bin"])
	}
}

// waitFetch retries a request until the server under test answers (it
// has just started), failing with its output if it exits.
func waitFetch(t *testing.T, ns *topo.NS, env []string, url string, p *topo.Proc) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		cmd := ns.Command(context.Background(), "curl", "-sS", "-g", "--fail", "--max-time", "5", "-o", "/dev/null", url)
		if env != nil {
			cmd.Env = env
		}
		out, err := cmd.CombinedOutput()
		if err == nil {
			return
		}
		select {
		case <-p.Done():
			t.Fatalf("server exited: %v\n%s", p.Wait(), p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v\n%s\nserver output:\n%s", url, err, out, p.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestNginxProxyPassLocal: nginx under the shim proxies /a/ to an upstream
// on the address of INS 1 and /b/ to one on the address of INS 2, /lo/ to
// 127.0.0.1 (the upstream's loopback listener, both under
// MPSHIM_LOOPBACK=ins), all served by a second nginx under the shim on the
// same host; requests from the wan namespace get the upstream's documents.
func TestNginxProxyPassLocal(t *testing.T) {
	tp, iso, addrs := setup2(t)
	t.Setenv("MPSHIM_LOOPBACK", "ins") // inherited by both nginx
	files := harness.RandomFiles(map[string]int{"c.bin": 256 << 10})
	harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso, Files: files,
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 1;
events { worker_connections 256; }
http {
    access_log off;
    server {
        listen 8080;
        listen 127.0.0.1:8081;
        root %s;
    }
}
`, root)
		},
	})
	harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso,
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 2;
events { worker_connections 256; }
http {
    access_log off;
    server {
        listen 80;
        location /a/ { proxy_pass http://%s:8080/; }
        location /b/ { proxy_pass http://%s:8080/; }
        location /lo/ { proxy_pass http://127.0.0.1:8081/; }
    }
}
`, addrs[0], addrs[1])
		},
	})
	for _, a := range addrs {
		for _, path := range []string{"a", "b", "lo"} {
			harness.Fetch(t, tp.WAN, nil, fmt.Sprintf("http://%s/%s/c.bin", a, path), files["c.bin"])
		}
	}
}

// redisCLI runs redis-cli from the wan namespace (not under the shim).
func redisCLI(t *testing.T, tp *topo.Topology, addr netip.Addr, port int, args ...string) (string, error) {
	t.Helper()
	cmd := tp.WAN.Command(context.Background(), "redis-cli", append([]string{"-h", addr.String(), "-p", fmt.Sprint(port)}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestRedisReplicaFollowsPrimary: a redis primary and a replica, both under
// the shim on the same host, the replica following the primary by the
// address of the other INS; a key written to the primary from the wan
// namespace is read back from the replica.
func TestRedisReplicaFollowsPrimary(t *testing.T) {
	tp, iso, addrs := setup2(t)
	harness.NeedFiles(t, "/usr/bin/redis-server", "/usr/bin/redis-cli")
	dir := t.TempDir()
	start := func(port int, extra ...string) *topo.Proc {
		args := append([]string{"--port", fmt.Sprint(port), "--bind", "*", "--protected-mode", "no",
			"--save", "", "--appendonly", "no", "--dir", dir, "--dbfilename", fmt.Sprintf("d%d.rdb", port)}, extra...)
		p, err := tp.App.StartEnv(context.Background(), shimEnv(t, iso), "/usr/bin/redis-server", args...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop() })
		return p
	}
	primary := start(6379)
	replica := start(6380, "--replicaof", addrs[1].String(), "6379")
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for {
		out, err := redisCLI(t, tp, addrs[0], 6379, "SET", "mpshim-key", "through-the-ins")
		if err == nil && out == "OK" {
			out, err = redisCLI(t, tp, addrs[0], 6380, "GET", "mpshim-key")
			if err == nil && out == "through-the-ins" {
				break
			}
		}
		last = fmt.Sprintf("%q %v", out, err)
		if time.Now().After(deadline) {
			info, _ := redisCLI(t, tp, addrs[0], 6380, "INFO", "replication")
			t.Fatalf("replica never showed the key (last: %s)\nreplica INFO replication:\n%s\nprimary:\n%s\nreplica:\n%s",
				last, info, primary.Output(), replica.Output())
		}
		time.Sleep(300 * time.Millisecond)
	}
	info, _ := redisCLI(t, tp, addrs[0], 6380, "INFO", "replication")
	if !strings.Contains(info, "master_link_status:up") {
		t.Errorf("replica link not up:\n%s", info)
	}
}

// TestWildcardListenerOnKernelLoopback: nginx under the shim with `listen
// 8080` and `listen [::]:8080` (loopback on the kernel, the default) answers
// curl, not under the shim, on 127.0.0.1 and ::1 in its own namespace, as a
// wildcard listener does on Linux, and still on the INS addresses from wan.
func TestWildcardListenerOnKernelLoopback(t *testing.T) {
	tp, iso, addrs := setup2(t)
	files := harness.RandomFiles(map[string]int{"d.bin": 128 << 10})
	harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso, Files: files,
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 2;
events { worker_connections 256; }
http {
    access_log off;
    server {
        listen 8080;
        listen [::]:8080;
        root %s;
    }
}
`, root)
		},
	})
	for i := 0; i < 4; i++ {
		harness.Fetch(t, tp.App, nil, "http://127.0.0.1:8080/d.bin", files["d.bin"])
		harness.Fetch(t, tp.App, nil, "http://[::1]:8080/d.bin", files["d.bin"])
	}
	for _, a := range addrs {
		harness.Fetch(t, tp.WAN, nil, fmt.Sprintf("http://%s:8080/d.bin", a), files["d.bin"])
	}
}
