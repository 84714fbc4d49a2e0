// Package nginx runs Debian's nginx, unmodified, under libmpshim.so in an
// app namespace that has only loopback, served by the isolator's INS, and
// drives it from the wan namespace with curl, ab and wrk; its proxy_pass
// reaches an upstream nginx in the wan namespace through the INS.
package nginx

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// server is one nginx under the shim.
type server struct {
	dir, conf string
	env       []string
	tp        *topo.Topology
	files     map[string][]byte
}

// startNginx runs nginx under the shim in the app namespace; its /up/
// location proxies to upstream (host:port), an nginx in the wan namespace.
func startNginx(t *testing.T, tp *topo.Topology, iso *harness.Isolator, reuseport bool, upstream string) *server {
	t.Helper()
	dir, err := os.MkdirTemp("", "mpshim-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "www")
	os.MkdirAll(root, 0o755)
	s := &server{dir: dir, conf: filepath.Join(dir, "nginx.conf"), tp: tp, files: map[string][]byte{}}
	for name, n := range map[string]int{"1k.bin": 1 << 10, "1m.bin": 1 << 20} {
		b := make([]byte, n)
		rand.Read(b)
		s.files[name] = b
		if err := os.WriteFile(filepath.Join(root, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	listen := "listen 80;\n        listen [::]:80;"
	if reuseport {
		listen = "listen 80 reuseport;\n        listen [::]:80 reuseport;"
	}
	conf := fmt.Sprintf(`daemon on;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
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
	if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	s.env = append(os.Environ(), "LD_PRELOAD="+harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+iso.Socket)
	if out, err := s.nginx("-e", filepath.Join(dir, "error.log")); err != nil {
		t.Fatalf("nginx start: %v\n%s\n%s", err, out, s.errorLog())
	}
	t.Cleanup(func() {
		s.nginx("-s", "quit")
		s.waitGone(5 * time.Second)
		if t.Failed() {
			t.Logf("nginx error.log:\n%s", s.errorLog())
		}
	})
	return s
}

func (s *server) nginx(args ...string) (string, error) {
	cmd := s.tp.App.Command(context.Background(), "/usr/sbin/nginx", append([]string{"-c", s.conf}, args...)...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (s *server) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "error.log"))
	return string(b)
}

func (s *server) masterPID() int { return harness.ReadPIDFile(filepath.Join(s.dir, "nginx.pid")) }

// workers lists the master's children.
func (s *server) workers() []int { return harness.Children(s.masterPID()) }

func (s *server) waitGone(d time.Duration) bool {
	pid := s.masterPID()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if pid == 0 || syscall.Kill(pid, 0) != nil {
			return true
		}
	}
	return false
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

// upstream is a plain nginx in the wan namespace (no shim) serving dir on
// addr; it is stopped at cleanup.
type upstream struct {
	dir  string
	addr string
	tp   *topo.Topology
}

func startUpstream(t *testing.T, tp *topo.Topology, addr string, files map[string][]byte) *upstream {
	t.Helper()
	dir, err := os.MkdirTemp("", "mpshim-upstream-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "www")
	os.MkdirAll(root, 0o755)
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(root, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
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
`, dir, addr, root)), 0o644)
	u := &upstream{dir: dir, addr: addr, tp: tp}
	if out, err := tp.WAN.Command(context.Background(), "/usr/sbin/nginx", "-c", conf, "-e", filepath.Join(dir, "error.log")).CombinedOutput(); err != nil {
		t.Fatalf("upstream nginx: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		pid := harness.ReadPIDFile(filepath.Join(dir, "nginx.pid"))
		tp.WAN.Command(context.Background(), "/usr/sbin/nginx", "-c", conf, "-s", "quit").Run()
		for i := 0; i < 100 && pid != 0 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	})
	return u
}

func (u *upstream) served() (int, int) { return harness.StatusLog(filepath.Join(u.dir, "access.log")) }

func (s *server) served() (int, int) { return harness.StatusLog(filepath.Join(s.dir, "access.log")) }

// procs is the master and its workers.
func (s *server) procs() []int { return append([]int{s.masterPID()}, s.workers()...) }

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
			upFiles := map[string][]byte{"1k.bin": make([]byte, 1<<10), "1m.bin": make([]byte, 1<<20)}
			for _, b := range upFiles {
				rand.Read(b)
			}
			up := startUpstream(t, tp, net.JoinHostPort(tp.Uplinks[0].WANAddr4.String(), "8081"), upFiles)
			s := startNginx(t, tp, iso, reuseport, up.addr)
			if w := s.workers(); len(w) != 2 {
				t.Fatalf("nginx master %d has %d workers, want 2", s.masterPID(), len(w))
			}
			for _, u := range urls(infos, "") {
				s.fetch(t, u+"/1k.bin", s.files["1k.bin"])
				s.fetch(t, u+"/1m.bin", s.files["1m.bin"])
				// proxy_pass: out through the INS to the wan upstream.
				s.fetch(t, u+"/up/1m.bin", upFiles["1m.bin"])
			}

			// Acceptance: 100,000 keep-alive requests over 256
			// connections, no error, no growth of nginx or the
			// isolator, then the 1 MiB file intact.
			iso.RunLoad(t, harness.Load{NS: tp.WAN, URL: urls(infos, "/1k.bin")[0], Requests: 100000, Warmup: 20000,
				Conns: 256, Pids: s.procs, Served: s.served})
			s.fetch(t, urls(infos, "/1m.bin")[1], s.files["1m.bin"])

			// A connection per request: accept and close churn.
			r := ab(t, tp, urls(infos, "/1k.bin")[1], 5000, 256, false)
			if r["Complete requests"] != 5000 || r["Failed requests"] != 0 || r["Non-2xx responses"] != 0 || r["Write errors"] != 0 {
				t.Fatalf("ab: %v; want 5000 complete, no failures, no non-2xx", r)
			}

			// Through the proxy: every response complete, every request
			// reaching the upstream over its kept-alive connections.
			up0, _ := up.served()
			wr := harness.Wrk(t, tp.WAN, urls(infos, "/up/1k.bin")[0], 10000, 64, 5*time.Minute)
			if wr.SocketErrors() != 0 || wr.Non2xx != 0 {
				t.Fatalf("wrk through proxy_pass: %d socket errors, %d non-2xx\n%s", wr.SocketErrors(), wr.Non2xx, wr.Output)
			}
			t.Logf("wrk -c 64 through proxy_pass: %d responses in %v", wr.Requests, wr.Elapsed.Round(time.Millisecond))
			deadline := time.Now().Add(10 * time.Second)
			for {
				up1, bad := up.served()
				if n := up1 - up0; n >= wr.Requests && n <= wr.Requests+64 && bad == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the upstream logged %d requests (%d not 2xx) for %d proxied responses", up1-up0, bad, wr.Requests)
				}
				time.Sleep(100 * time.Millisecond)
			}

			// Reload: new workers, service goes on.
			workers := s.workers()
			if out, err := s.nginx("-s", "reload"); err != nil {
				t.Fatalf("nginx -s reload: %v\n%s", err, out)
			}
			deadline = time.Now().Add(10 * time.Second)
			for {
				w := s.workers()
				if len(w) == 2 && w[0] != workers[0] && w[0] != workers[1] {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("workers after reload: %v (before %v)", w, workers)
				}
				time.Sleep(100 * time.Millisecond)
			}
			for _, u := range urls(infos, "/1k.bin") {
				s.fetch(t, u, s.files["1k.bin"])
			}
			if out, err := s.nginx("-s", "quit"); err != nil {
				t.Fatalf("nginx -s quit: %v\n%s", err, out)
			}
			if !s.waitGone(10 * time.Second) {
				t.Fatalf("nginx did not quit")
			}
			if out, err := tp.WAN.Command(context.Background(), "curl", "-sS", "--max-time", "3", urls(infos, "/1k.bin")[0]).CombinedOutput(); err == nil {
				t.Fatalf("nginx quit, yet %s answered: %s", urls(infos, "/1k.bin")[0], bytes.TrimSpace(out))
			}
		})
	}
}
