package harness

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/topo"
)

// NginxOptions say how StartNginx runs Debian's nginx.
type NginxOptions struct {
	// NS is the namespace nginx runs in.
	NS *topo.NS
	// Shim, when set, runs nginx under libmpshim.so served by this
	// isolator.
	Shim *Isolator
	// Launcher, when set, is the command line nginx is started through
	// (e.g. mpshim run --socket S --), instead of Shim's LD_PRELOAD; the
	// nginx binary and its arguments follow it.
	Launcher []string
	// Files are the documents nginx serves from its root, by name.
	Files map[string][]byte
	// Config returns nginx.conf for the directory that holds the
	// configuration, pid file and logs and for the document root, without
	// the directives StartNginx puts first: daemon on, the pid file
	// dir/nginx.pid and the error log dir/error.log (level info).
	Config func(dir, root string) string
}

// Nginx is one nginx started by StartNginx.
type Nginx struct {
	// Dir holds nginx.conf, nginx.pid and the logs; Root the documents.
	Dir, Root string
	// Files are the documents served, by name.
	Files map[string][]byte
	conf  string
	ns    *topo.NS
	env   []string
}

// RandomFiles returns documents of random bytes of the given sizes.
func RandomFiles(sizes map[string]int) map[string][]byte {
	files := make(map[string][]byte, len(sizes))
	for name, n := range sizes {
		b := make([]byte, n)
		rand.Read(b)
		files[name] = b
	}
	return files
}

// StartNginx writes the documents and configuration into a temporary
// directory and starts nginx. At cleanup it asks nginx to quit, kills the
// master and its workers by pid if they have not exited within 5 s, shows
// the error log if the test failed, and removes the directory.
func StartNginx(t testing.TB, o NginxOptions) *Nginx {
	t.Helper()
	NeedFiles(t, "/usr/sbin/nginx")
	dir, err := os.MkdirTemp("", "mpshim-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	// nginx's workers run as www-data and must reach the documents.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &Nginx{Dir: dir, Root: filepath.Join(dir, "www"), Files: o.Files, conf: filepath.Join(dir, "nginx.conf"), ns: o.NS}
	if err := os.Mkdir(n.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range o.Files {
		if err := os.WriteFile(filepath.Join(n.Root, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf("daemon on;\npid %[1]s/nginx.pid;\nerror_log %[1]s/error.log info;\n", dir) + o.Config(dir, n.Root)
	if err := os.WriteFile(n.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if o.Shim != nil {
		n.env = append(os.Environ(), "LD_PRELOAD="+Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+o.Shim.Socket)
	}
	start := n.Run
	if o.Launcher != nil {
		start = func(args ...string) (string, error) {
			argv := append(append(append([]string{}, o.Launcher[1:]...), "/usr/sbin/nginx", "-c", n.conf), args...)
			out, err := n.ns.Command(context.Background(), o.Launcher[0], argv...).CombinedOutput()
			return string(out), err
		}
	}
	if out, err := start("-e", filepath.Join(dir, "error.log")); err != nil {
		t.Fatalf("nginx start: %v\n%s\n%s", err, out, n.ErrorLog())
	}
	t.Cleanup(func() {
		procs := n.Procs()
		n.Run("-s", "quit")
		if !n.WaitGone(5 * time.Second) {
			t.Errorf("nginx (pids %v) did not quit within 5 s; killed", procs)
			for _, pid := range procs {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			t.Logf("nginx error.log:\n%s", n.ErrorLog())
		}
	})
	return n
}

// Run runs the nginx binary with n's configuration and args (-s quit,
// -s reload, …) in n's namespace and environment.
func (n *Nginx) Run(args ...string) (string, error) {
	cmd := n.ns.Command(context.Background(), "/usr/sbin/nginx", append([]string{"-c", n.conf}, args...)...)
	if n.env != nil {
		cmd.Env = n.env
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ErrorLog returns the error log so far.
func (n *Nginx) ErrorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "error.log"))
	return string(b)
}

// MasterPID is the master's pid, 0 if it has not written its pid file.
func (n *Nginx) MasterPID() int { return ReadPIDFile(filepath.Join(n.Dir, "nginx.pid")) }

// Workers lists the master's children.
func (n *Nginx) Workers() []int { return Children(n.MasterPID()) }

// Procs is the master and its workers.
func (n *Nginx) Procs() []int {
	pid := n.MasterPID()
	if pid == 0 {
		return nil
	}
	return append([]int{pid}, Children(pid)...)
}

// Served counts the requests in the access log and how many of them did
// not get a 2xx status (StatusLog); the configuration must write it to
// Dir/access.log with log_format '$status'.
func (n *Nginx) Served() (total, non2xx int) { return StatusLog(filepath.Join(n.Dir, "access.log")) }

// WaitGone waits up to d for the master to exit and reports whether it did.
func (n *Nginx) WaitGone(d time.Duration) bool {
	pid := n.MasterPID()
	for deadline := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		if pid == 0 || syscall.Kill(pid, 0) != nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
