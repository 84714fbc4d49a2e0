// Package apache runs Debian's Apache httpd, unmodified, under
// libmpshim.so in an app namespace that has only loopback, with the prefork
// and the event MPM, and drives it from the wan namespace with curl, ab and
// wrk.
package apache

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

const httpd = "/usr/sbin/apache2"

// loadConns is the number of connections of the acceptance load run.
const loadConns = 256

type server struct {
	dir, conf string
	env       []string
	tp        *topo.Topology
	files     map[string][]byte
}

func (s *server) ctl(args ...string) (string, error) {
	cmd := s.tp.App.Command(context.Background(), httpd, append([]string{"-f", s.conf}, args...)...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (s *server) pid() int { return harness.ReadPIDFile(filepath.Join(s.dir, "httpd.pid")) }

func (s *server) children() []int { return harness.Children(s.pid()) }

// procs is the parent and its children.
func (s *server) procs() []int { return append([]int{s.pid()}, s.children()...) }

func (s *server) fetch(t *testing.T, url, name string) {
	t.Helper()
	harness.Fetch(t, s.tp.WAN, nil, url+name, s.files[name])
}

func (s *server) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "error.log"))
	return string(b)
}

func (s *server) served() (int, int) { return harness.StatusLog(filepath.Join(s.dir, "access.log")) }

// mpmConf sizes each MPM for loadConns clients that keep their connections
// alive. The event MPM closes a kept-alive connection whenever a request
// arrives on it and its process has no idle worker, and all of a process's
// kept-alive connections once its workers were all busy (event.c: "the
// client can re-connect to a different process"): wrk counts each as a
// read error, ab as a Length failure. It does so on the kernel as well
// (the same configuration with 25 threads a process gives wrk -c 256 a few
// thousand read errors per 50,000 requests on loopback). A process that
// has a thread for every connection a client opens never runs out, and
// with as many spare threads allowed as there are threads none is retired
// mid-run. Prefork serves one connection a process: 150 processes take
// turns (MaxKeepAliveRequests), the other clients wait in the backlog.
var mpmConf = map[string]string{
	"prefork": `StartServers 150
MinSpareServers 5
MaxSpareServers 150
ServerLimit 150
MaxRequestWorkers 150
`,
	"event": fmt.Sprintf(`StartServers 2
ServerLimit 2
ThreadLimit %[1]d
ThreadsPerChild %[1]d
MaxRequestWorkers %[2]d
MinSpareThreads 1
MaxSpareThreads %[2]d
`, loadConns, 2*loadConns),
}

// startApache writes a configuration for mpm and starts apache2 under the
// shim in the app namespace; it is stopped at cleanup.
func startApache(t *testing.T, tp *topo.Topology, iso *harness.Isolator, mpm string) *server {
	t.Helper()
	dir, err := os.MkdirTemp("", "mpshim-apache-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "www")
	os.MkdirAll(root, 0o755)
	s := &server{dir: dir, conf: filepath.Join(dir, "httpd.conf"), tp: tp, files: map[string][]byte{}}
	for name, n := range map[string]int{"1k.bin": 1 << 10, "page.bin": 256 << 10, "1m.bin": 1 << 20} {
		b := make([]byte, n)
		rand.Read(b)
		s.files[name] = b
		if err := os.WriteFile(filepath.Join(root, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mods := "/usr/lib/apache2/modules"
	conf := fmt.Sprintf(`ServerRoot %[1]s
ServerName mpshim-test
PidFile %[1]s/httpd.pid
ErrorLog %[1]s/error.log
LogLevel warn
LoadModule mpm_%[3]s_module %[4]s/mod_mpm_%[3]s.so
LoadModule authz_core_module %[4]s/mod_authz_core.so
LoadModule mime_module %[4]s/mod_mime.so
LogFormat "%%>s" status
CustomLog %[1]s/access.log status
User www-data
Group www-data
# One dual-stack listener ([::]:80 without IPV6_V6ONLY), as Debian's default.
Listen 80
TypesConfig /etc/mime.types
DefaultRuntimeDir %[1]s
DocumentRoot %[2]s
<Directory %[2]s>
    Require all granted
</Directory>
EnableSendfile On
KeepAlive On
MaxKeepAliveRequests 100
# The keep-alive timer starts when a response is written; on a loaded
# two-core machine the client may read its last bytes seconds later.
KeepAliveTimeout 60
%[5]s`, dir, root, mpm, mods, mpmConf[mpm])
	os.WriteFile(s.conf, []byte(conf), 0o644)
	s.env = append(os.Environ(), "LD_PRELOAD="+harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+iso.Socket)
	if out, err := s.ctl("-k", "start"); err != nil {
		t.Fatalf("apache2 -k start: %v\n%s\n%s", err, out, s.errorLog())
	}
	t.Cleanup(func() {
		s.ctl("-k", "stop")
		for i := 0; i < 100 && s.pid() != 0 && syscall.Kill(s.pid(), 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
		if t.Failed() {
			t.Logf("apache error.log:\n%s", s.errorLog())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); s.pid() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("apache did not write its pid file:\n%s", s.errorLog())
		}
	}
	return s
}

func TestApache(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, httpd, "/usr/bin/ab", "/usr/bin/curl", "/usr/bin/wrk")
	for _, mpm := range []string{"prefork", "event"} {
		t.Run(mpm, func(t *testing.T) { testMPM(t, mpm) })
	}
}

func testMPM(t *testing.T, mpm string) {
	tp := topo.New(t, topo.Config{Uplinks: 2})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: []string{"--allow-uid", "0", "--allow-uid", "33"}})
	infos, err := iso.List()
	if err != nil {
		t.Fatal(err)
	}
	s := startApache(t, tp, iso, mpm)
	var urls []string
	for _, in := range infos {
		for _, u := range in.Uplinks {
			urls = append(urls, "http://"+strings.Split(u.Addr4, "/")[0]+"/", "http://["+strings.Split(u.Addr6, "/")[0]+"]/")
		}
	}
	for _, u := range urls {
		s.fetch(t, u, "page.bin")
		s.fetch(t, u, "1m.bin")
	}

	// Keep-alive responses of 256 KiB, 64 at a time: each one complete.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := tp.WAN.Command(ctx, "ab", "-q", "-k", "-r", "-s", "30", "-n", "5000", "-c", "64", urls[0]+"page.bin").CombinedOutput()
	if err != nil {
		t.Fatalf("ab: %v\n%s", err, out)
	}
	for _, re := range []string{`Complete requests:\s+5000`, `Failed requests:\s+0`} {
		if !regexp.MustCompile(re).Match(out) {
			t.Fatalf("ab output lacks %q:\n%s", re, out)
		}
	}
	if regexp.MustCompile(`Non-2xx responses:\s+[1-9]`).Match(out) {
		t.Fatalf("ab saw non-2xx responses:\n%s", out)
	}
	if m := regexp.MustCompile(`Transfer rate:\s+([\d.]+)`).FindSubmatch(out); m != nil {
		t.Logf("%s: ab -k -c 64, 256 KiB page: %s KB/s", mpm, m[1])
	}

	// Acceptance: 100,000 requests over 256 connections, no error, no
	// growth of the app or the isolator, then the 1 MiB file intact.
	growth := harness.DefaultLimits
	if mpm == "prefork" {
		// prefork spawns up to 150 children under this load, each of
		// which registers (its ring mapped in the daemon): the daemon's
		// heap settles 7.5-8.6 MiB above its idle size, once, which
		// brushes the default 8 MiB.
		growth.DaemonRSS = 12 << 10
	}
	if mpm == "event" {
		// Each of a process's 256 threads keeps its allocator and stack
		// pages once it has served: a process whose threads the warm-up
		// did not all use grows by up to about 7 MiB, once.
		growth.AppRSS = 8 << 10
	}
	iso.RunLoad(t, harness.Load{NS: tp.WAN, URL: urls[0] + "1k.bin", Requests: 100000, Warmup: 20000,
		Conns: loadConns, Pids: s.procs, Served: s.served, Growth: growth})
	s.fetch(t, urls[1], "1m.bin")

	before := s.children()
	if out, err := s.ctl("-k", "graceful"); err != nil {
		t.Fatalf("apache2 -k graceful: %v\n%s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		after := s.children()
		fresh := len(after) > 0
		for _, a := range after {
			for _, b := range before {
				if a == b {
					fresh = false
				}
			}
		}
		if fresh {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("children after graceful restart %v, before %v", after, before)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, u := range urls {
		s.fetch(t, u, "page.bin")
	}
}
