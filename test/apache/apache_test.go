// Package apache runs Debian's Apache httpd, unmodified, under
// libmpshim.so in an app namespace that has only loopback, with the prefork
// and the event MPM, and drives it from the wan namespace with curl and ab.
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

type server struct {
	dir, conf string
	env       []string
	tp        *topo.Topology
	page      []byte
}

func (s *server) ctl(args ...string) (string, error) {
	cmd := s.tp.App.Command(context.Background(), httpd, append([]string{"-f", s.conf}, args...)...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (s *server) pid() int { return harness.ReadPIDFile(filepath.Join(s.dir, "httpd.pid")) }

func (s *server) children() []int { return harness.Children(s.pid()) }

func (s *server) fetch(t *testing.T, url string) {
	t.Helper()
	harness.Fetch(t, s.tp.WAN, nil, url, s.page)
}

func (s *server) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "error.log"))
	return string(b)
}

func TestApache(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, httpd, "/usr/bin/ab", "/usr/bin/curl")
	for _, mpm := range []string{"prefork", "event"} {
		t.Run(mpm, func(t *testing.T) {
			if mpm == "event" && os.Getenv("MPSHIM_TEST_KNOWN_BUGS") == "" {
				t.Skip("known bug: under the event MPM, ab -k -c 64 sees about 1 in 1,000 " +
					"256 KiB keep-alive responses truncated (Length failures) at about 200 req/s; " +
					"set MPSHIM_TEST_KNOWN_BUGS=1 to run it")
			}
			testMPM(t, mpm)
		})
	}
}

func testMPM(t *testing.T, mpm string) {
	tp := topo.New(t, topo.Config{Uplinks: 2})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: []string{"--allow-uid", "0", "--allow-uid", "33"}})
	infos, err := iso.List()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mpshim-apache-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "www")
	os.MkdirAll(root, 0o755)
	s := &server{dir: dir, conf: filepath.Join(dir, "httpd.conf"), tp: tp, page: make([]byte, 256<<10)}
	rand.Read(s.page)
	os.WriteFile(filepath.Join(root, "page.bin"), s.page, 0o644)
	mods := "/usr/lib/apache2/modules"
	conf := fmt.Sprintf(`ServerRoot %[1]s
ServerName mpshim-test
PidFile %[1]s/httpd.pid
ErrorLog %[1]s/error.log
LogLevel warn
LoadModule mpm_%[3]s_module %[4]s/mod_mpm_%[3]s.so
LoadModule authz_core_module %[4]s/mod_authz_core.so
LoadModule mime_module %[4]s/mod_mime.so
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
MaxKeepAliveRequests 0
StartServers 2
MaxRequestWorkers 150
ServerLimit 150
`, dir, root, mpm, mods)
	if mpm == "event" {
		conf += "ThreadsPerChild 25\nMaxRequestWorkers 150\nServerLimit 6\n"
	}
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
	var urls []string
	for _, in := range infos {
		for _, u := range in.Uplinks {
			urls = append(urls, "http://"+strings.Split(u.Addr4, "/")[0]+"/page.bin", "http://["+strings.Split(u.Addr6, "/")[0]+"]/page.bin")
		}
	}
	for _, u := range urls {
		s.fetch(t, u)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := tp.WAN.Command(ctx, "ab", "-q", "-k", "-r", "-s", "30", "-n", "5000", "-c", "64", strings.Replace(urls[0], "page.bin", "", 1)+"page.bin").CombinedOutput()
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
	if m := regexp.MustCompile(`Requests per second:\s+([\d.]+)`).FindSubmatch(out); m != nil {
		t.Logf("%s: ab -k -c 64, 256 KiB page: %s req/s", mpm, m[1])
	}

	before := s.children()
	if out, err := s.ctl("-k", "graceful"); err != nil {
		t.Fatalf("apache2 -k graceful: %v\n%s", err, out)
	}
	deadline := time.Now().Add(15 * time.Second)
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
		s.fetch(t, u)
	}
}
