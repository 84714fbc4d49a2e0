// Package nginx runs Debian's nginx, unmodified, under libmpshim.so in an
// app namespace that has only loopback, served by the isolator's INS, and
// drives it from the wan namespace with curl and ab.
package nginx

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
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

func startNginx(t *testing.T, tp *topo.Topology, iso *harness.Isolator, reuseport bool) *server {
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
    access_log %[1]s/access.log;
    sendfile on;
    keepalive_timeout 60;
    keepalive_requests 100000;
    server {
        %[3]s
        root %[2]s;
    }
}
`, dir, root, listen)
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

func fdCount(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

func rssKB(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	m := regexp.MustCompile(`VmRSS:\s+(\d+)`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
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

func TestNginx(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl", "/usr/bin/ab")
	for _, reuseport := range []bool{false, true} {
		t.Run(fmt.Sprintf("reuseport=%v", reuseport), func(t *testing.T) {
			tp := topo.New(t, topo.Config{Uplinks: 2})
			iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: []string{"--allow-uid", "0", "--allow-uid", "33"}})
			infos, err := iso.List()
			if err != nil {
				t.Fatal(err)
			}
			s := startNginx(t, tp, iso, reuseport)
			if w := s.workers(); len(w) != 2 {
				t.Fatalf("nginx master %d has %d workers, want 2", s.masterPID(), len(w))
			}
			for _, u := range urls(infos, "") {
				s.fetch(t, u+"/1k.bin", s.files["1k.bin"])
				s.fetch(t, u+"/1m.bin", s.files["1m.bin"])
			}

			// Load: 100,000 keep-alive requests, 256 concurrent connections.
			target := urls(infos, "/1k.bin")[0]
			workers := s.workers()
			fds0, rss0 := map[int]int{}, map[int]int{}
			for _, w := range workers {
				fds0[w], rss0[w] = fdCount(w), rssKB(w)
			}
			isoRSS0 := rssKB(iso.PID())
			r := ab(t, tp, target, 100000, 256, true)
			if r["Complete requests"] != 100000 || r["Failed requests"] != 0 || r["Non-2xx responses"] != 0 || r["Write errors"] != 0 {
				t.Fatalf("ab: %v; want 100000 complete, no failures, no non-2xx", r)
			}
			s.fetch(t, urls(infos, "/1m.bin")[1], s.files["1m.bin"])
			time.Sleep(2 * time.Second) // keep-alive connections close
			for _, w := range workers {
				if fdCount(w) > fds0[w]+4 {
					t.Errorf("worker %d: %d fds after the load, %d before", w, fdCount(w), fds0[w])
				}
				t.Logf("worker %d: fds %d→%d, RSS %d→%d KiB", w, fds0[w], fdCount(w), rss0[w], rssKB(w))
			}
			t.Logf("isolator RSS %d→%d KiB", isoRSS0, rssKB(iso.PID()))

			// Reload: new workers, service goes on.
			if out, err := s.nginx("-s", "reload"); err != nil {
				t.Fatalf("nginx -s reload: %v\n%s", err, out)
			}
			deadline := time.Now().Add(10 * time.Second)
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
