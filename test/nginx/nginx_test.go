// Package nginx runs Debian's nginx, unmodified, under libmpshim.so in an
// app namespace that has only loopback, served by the isolator's INS, and
// drives it from the wan namespace with curl, ab and wrk; its proxy_pass
// reaches an upstream nginx in the wan namespace through the INS.
package nginx

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// server is one nginx under the shim.
type server struct {
	*harness.Nginx
	tp *topo.Topology
}

// startNginx runs nginx under the shim in the app namespace; its /up/
// location proxies to upstream (host:port), an nginx in the wan namespace.
func startNginx(t *testing.T, tp *topo.Topology, iso *harness.Isolator, reuseport bool, upstream string) *server {
	t.Helper()
	listen := "listen 80;\n        listen [::]:80;"
	if reuseport {
		listen = "listen 80 reuseport;\n        listen [::]:80 reuseport;"
	}
	n := harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso,
		Files: harness.RandomFiles(map[string]int{"1k.bin": 1 << 10, "1m.bin": 1 << 20}),
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 2;
events { worker_connections 4096; }
http {
    log_format status '$status';
    access_log %[1]s/access.log status;
    sendfile on;
    keepalive_timeout 60;
    keepalive_requests 100000;
    upstream wan {
        server %[4]s;
        keepalive 16;
    }
    server {
        %[3]s
        root %[2]s;
        location /up/ {
            proxy_pass http://wan/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`, dir, root, listen, upstream)
		},
	})
	return &server{Nginx: n, tp: tp}
}

// fetch gets url from wan with curl and checks the body.
func (s *server) fetch(t *testing.T, url string, want []byte) {
	t.Helper()
	harness.Fetch(t, s.tp.WAN, nil, url, want)
}

func urls(infos []api.INSInfo, path string) []string {
	var out []string
	for _, in := range infos {
		for _, u := range in.Uplinks {
			out = append(out, "http://"+strings.Split(u.Addr4, "/")[0]+path)
			if u.Addr6 != "" {
				out = append(out, "http://["+strings.Split(u.Addr6, "/")[0]+"]"+path)
			}
		}
	}
	return out
}

var abField = func(name string) *regexp.Regexp { return regexp.MustCompile(name + `:\s+(\d+)`) }

// ab runs ApacheBench from wan and returns its counters.
func ab(t *testing.T, tp *topo.Topology, url string, n, c int, keepalive bool) map[string]int {
	t.Helper()
	args := []string{"-q", "-n", strconv.Itoa(n), "-c", strconv.Itoa(c), "-s", "30", "-r"}
	if keepalive {
		args = append(args, "-k")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := tp.WAN.Command(ctx, "ab", append(args, url)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ab %v %s: %v\n%s", args, url, err, out)
	}
	res := map[string]int{"non2xx": 0}
	for _, k := range []string{"Complete requests", "Failed requests", "Non-2xx responses", "Write errors"} {
		if m := abField(k).FindSubmatch(out); m != nil {
			v, _ := strconv.Atoi(string(m[1]))
			res[k] = v
		}
	}
	if m := regexp.MustCompile(`Requests per second:\s+([\d.]+)`).FindSubmatch(out); m != nil {
		t.Logf("ab %s -c %d: %s req/s", url, c, m[1])
	}
	return res
}

// startUpstream runs a plain nginx (no shim) in the wan namespace serving
// files on addr.
func startUpstream(t *testing.T, tp *topo.Topology, addr string, files map[string][]byte) *harness.Nginx {
	t.Helper()
	return harness.StartNginx(t, harness.NginxOptions{NS: tp.WAN, Files: files, Config: func(dir, root string) string {
		return fmt.Sprintf(`worker_processes 1;
events { worker_connections 1024; }
http {
    log_format status '$status';
    access_log %[1]s/access.log status;
    keepalive_requests 100000;
    server {
        listen %[2]s;
        root %[3]s;
    }
}
`, dir, addr, root)
	}})
}

func TestNginx(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl", "/usr/bin/ab", "/usr/bin/wrk")
	for _, reuseport := range []bool{false, true} {
		t.Run(fmt.Sprintf("reuseport=%v", reuseport), func(t *testing.T) {
			tp := topo.New(t, topo.Config{Uplinks: 2})
			iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: []string{"--allow-uid", "0", "--allow-uid", "33"}})
			infos, err := iso.List()
			if err != nil {
				t.Fatal(err)
			}
			upFiles := harness.RandomFiles(map[string]int{"1k.bin": 1 << 10, "1m.bin": 1 << 20})
			upAddr := net.JoinHostPort(tp.Uplinks[0].WANAddr4.String(), "8081")
			up := startUpstream(t, tp, upAddr, upFiles)
			s := startNginx(t, tp, iso, reuseport, upAddr)
			if w := s.Workers(); len(w) != 2 {
				t.Fatalf("nginx master %d has %d workers, want 2", s.MasterPID(), len(w))
			}
			for _, u := range urls(infos, "") {
				s.fetch(t, u+"/1k.bin", s.Files["1k.bin"])
				s.fetch(t, u+"/1m.bin", s.Files["1m.bin"])
				// proxy_pass: out through the INS to the wan upstream.
				s.fetch(t, u+"/up/1m.bin", upFiles["1m.bin"])
			}

			// Acceptance: 100,000 keep-alive requests over 256
			// connections, no error, no growth of nginx or the
			// isolator, then the 1 MiB file intact.
			iso.RunLoad(t, harness.Load{NS: tp.WAN, URL: urls(infos, "/1k.bin")[0], Requests: 100000, Warmup: 20000,
				Conns: 256, Pids: s.Procs, Served: s.Served})
			s.fetch(t, urls(infos, "/1m.bin")[1], s.Files["1m.bin"])

			// A connection per request: accept and close churn.
			r := ab(t, tp, urls(infos, "/1k.bin")[1], 5000, 256, false)
			if r["Complete requests"] != 5000 || r["Failed requests"] != 0 || r["Non-2xx responses"] != 0 || r["Write errors"] != 0 {
				t.Fatalf("ab: %v; want 5000 complete, no failures, no non-2xx", r)
			}

			// Through the proxy: every response complete, every request
			// reaching the upstream over its kept-alive connections.
			up0, _ := up.Served()
			wr := harness.Wrk(t, tp.WAN, urls(infos, "/up/1k.bin")[0], 10000, 64, 5*time.Minute)
			if wr.SocketErrors() != 0 || wr.Non2xx != 0 {
				t.Fatalf("wrk through proxy_pass: %d socket errors, %d non-2xx\n%s", wr.SocketErrors(), wr.Non2xx, wr.Output)
			}
			t.Logf("wrk -c 64 through proxy_pass: %d responses in %v", wr.Requests, wr.Elapsed.Round(time.Millisecond))
			deadline := time.Now().Add(10 * time.Second)
			for {
				up1, bad := up.Served()
				if n := up1 - up0; n >= wr.Requests && n <= wr.Requests+64 && bad == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the upstream logged %d requests (%d not 2xx) for %d proxied responses", up1-up0, bad, wr.Requests)
				}
				time.Sleep(100 * time.Millisecond)
			}

			// Reload: new workers, service goes on.
			workers := s.Workers()
			if out, err := s.Run("-s", "reload"); err != nil {
				t.Fatalf("nginx -s reload: %v\n%s", err, out)
			}
			deadline = time.Now().Add(10 * time.Second)
			for {
				w := s.Workers()
				if len(w) == 2 && w[0] != workers[0] && w[0] != workers[1] {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("workers after reload: %v (before %v)", w, workers)
				}
				time.Sleep(100 * time.Millisecond)
			}
			for _, u := range urls(infos, "/1k.bin") {
				s.fetch(t, u, s.Files["1k.bin"])
			}
			if out, err := s.Run("-s", "quit"); err != nil {
				t.Fatalf("nginx -s quit: %v\n%s", err, out)
			}
			if !s.WaitGone(10 * time.Second) {
				t.Fatalf("nginx did not quit")
			}
			if out, err := tp.WAN.Command(context.Background(), "curl", "-sS", "--max-time", "3", urls(infos, "/1k.bin")[0]).CombinedOutput(); err == nil {
				t.Fatalf("nginx quit, yet %s answered: %s", urls(infos, "/1k.bin")[0], bytes.TrimSpace(out))
			}
		})
	}
}
