package install

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// packaged are files the package installs (Debian paths).
var packaged = []string{
	"/usr/bin/isolator", "/usr/bin/mpshim", "/usr/bin/netflow",
	"/usr/lib/mpshim/libmpshim.so",
	"/etc/mpshim/isolator.yaml",
	"/lib/systemd/system/isolator.service",
	"/usr/share/bash-completion/completions/mpshim",
	"/usr/share/zsh/vendor-completions/_mpshim",
	"/usr/share/doc/mpshim/README.md",
}

// enabledLink is the symlink deb-systemd-helper makes to enable the unit.
const enabledLink = "/etc/systemd/system/multi-user.target.wants/isolator.service"

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// buildDeb builds the package of the given version into dir.
func buildDeb(t *testing.T, version, dir string) string {
	t.Helper()
	cmd := exec.Command("scripts/deb.sh", version, dir)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "BIN="+harness.BinDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("deb.sh %s: %v\n%s", version, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func installedVersion() string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Status} ${Version}", "mpshim").Output()
	if err != nil || !strings.HasPrefix(string(out), "install ok installed ") {
		return ""
	}
	return strings.TrimPrefix(string(out), "install ok installed ")
}

// boundingSet reads the capabilities of the unit's CapabilityBoundingSet=
// in setpriv's syntax (-all,+net_admin,…).
func boundingSet(t *testing.T, unit string) string {
	t.Helper()
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapabilityBoundingSet="); ok {
			s := "-all"
			for _, c := range strings.Fields(v) {
				s += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
			}
			return s
		}
	}
	t.Fatalf("%s has no CapabilityBoundingSet=", unit)
	return ""
}

// TestDeb builds the Debian package, installs it with dpkg into this
// machine, checks its files, user and unit, runs the installed isolator
// (with the unit's capability bounding set and no_new_privs) in a test
// topology and serves nginx through the installed `mpshim run`, upgrades
// it over a changed conffile, purges it and checks that nothing is left.
func TestDeb(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/bin/dpkg-deb", "/usr/bin/dpkg", "/usr/bin/setpriv", "/usr/sbin/nginx", "/usr/bin/curl", "/usr/bin/systemd-analyze")
	for _, b := range []string{"isolator", "mpshim", "netflow", "libmpshim.so"} {
		harness.Binary(t, b)
	}
	if v := installedVersion(); v != "" {
		t.Skipf("a mpshim package (%s) is installed on this machine; the test would replace and purge it", v)
	}
	for _, p := range packaged {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("%s exists outside the package; the test would overwrite it", p)
		}
	}
	// Purge removes /var/lib/mpshim: it must be the package's own.
	if _, err := os.Stat("/var/lib/mpshim"); err == nil {
		t.Skipf("/var/lib/mpshim exists outside the package; purging the package would remove it")
	}
	// The INS user may exist before the package (scripts/deps.sh makes it
	// for the test suites); then purge must leave it, else remove it.
	_, err := user.Lookup("mpshim-ins")
	userBefore := err == nil
	dir := t.TempDir()
	start := time.Now()
	phase := func(what string) {
		t.Logf("%s: %v", what, time.Since(start).Round(10*time.Millisecond))
		start = time.Now()
	}
	deb1 := buildDeb(t, "0.0.1~test", dir)
	deb2 := buildDeb(t, "0.0.2~test", dir)
	if fi, err := os.Stat(deb1); err == nil {
		t.Logf("%s: %d bytes", filepath.Base(deb1), fi.Size())
	}
	phase("two packages built")
	t.Cleanup(func() {
		if installedVersion() != "" {
			if out, err := exec.Command("dpkg", "--purge", "mpshim").CombinedOutput(); err != nil {
				t.Errorf("cleanup: dpkg --purge mpshim: %v\n%s", err, out)
			}
		}
	})
	if out, err := exec.Command("ps", "-p", "1", "-o", "comm=").Output(); err == nil {
		t.Logf("PID 1 is %s: systemd is %s", strings.TrimSpace(string(out)),
			map[bool]string{true: "running", false: "not running; the unit is checked with systemd-analyze verify, not started"}[dirExists("/run/systemd/system")])
	}

	out := run(t, "dpkg", "-i", deb1)
	t.Logf("dpkg -i %s:\n%s", filepath.Base(deb1), out)
	if v := installedVersion(); v != "0.0.1~test" {
		t.Fatalf("installed version %q, want 0.0.1~test", v)
	}
	for _, p := range packaged {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("package file missing: %v", err)
		}
	}
	u, err := user.Lookup("mpshim-ins")
	if err != nil {
		t.Fatalf("no mpshim-ins user after install: %v", err)
	}
	if u.Uid == "0" || u.HomeDir != "/nonexistent" {
		t.Errorf("mpshim-ins: uid %s home %s", u.Uid, u.HomeDir)
	}
	if _, err := os.Stat("/nonexistent"); err == nil {
		t.Errorf("/nonexistent exists: the user got a home directory")
	}
	if fi, err := os.Stat("/var/lib/mpshim"); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("/var/lib/mpshim: %v %v, want a 0700 directory", fi, err)
	}
	if target, err := os.Readlink(enabledLink); err != nil || target != "/lib/systemd/system/isolator.service" {
		t.Errorf("unit not enabled: %s -> %q, %v", enabledLink, target, err)
	}
	if !dirExists("/run/systemd/system") {
		// Without systemd the unit is not started: postinst said nothing
		// about starting, and no daemon runs.
		if _, err := os.Stat("/run/mpshim/isolator.sock"); err == nil {
			t.Errorf("a daemon's socket exists after installing without systemd")
		}
	}
	// The unit as systemd parses it: no unknown key, no bad value, the
	// ExecStart binary present.
	if out, err := exec.Command("systemd-analyze", "verify", "/lib/systemd/system/isolator.service").CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify isolator.service: %v\n%s", err, out)
	}
	loadConfig(t, "/etc/mpshim/isolator.yaml")

	phase("installed and checked")
	t.Run("serve", func(t *testing.T) { serveInstalled(t) })
	phase("served nginx")

	// Upgrade over a changed conffile: dpkg keeps the admin's file.
	f, err := os.OpenFile("/etc/mpshim/isolator.yaml", os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("# changed by the admin\n")
	f.Close()
	out = run(t, "dpkg", "-i", deb2)
	t.Logf("dpkg -i %s:\n%s", filepath.Base(deb2), out)
	if v := installedVersion(); v != "0.0.2~test" {
		t.Fatalf("version after upgrade %q, want 0.0.2~test", v)
	}
	if b, _ := os.ReadFile("/etc/mpshim/isolator.yaml"); !strings.HasSuffix(string(b), "# changed by the admin\n") {
		t.Errorf("upgrade replaced the changed conffile")
	}
	if _, err := os.Readlink(enabledLink); err != nil {
		t.Errorf("unit no longer enabled after upgrade: %v", err)
	}
	if out, err := exec.Command("/usr/bin/mpshim", "doctor", "--socket", filepath.Join(dir, "none"), "--api", filepath.Join(dir, "none"), "/usr/sbin/nginx").CombinedOutput(); !strings.Contains(string(out), "ok    library /usr/lib/mpshim/libmpshim.so") {
		t.Errorf("upgraded mpshim doctor (%v):\n%s", err, out)
	}

	phase("upgraded")
	out = run(t, "dpkg", "--purge", "mpshim")
	t.Logf("dpkg --purge mpshim:\n%s", out)
	if v := installedVersion(); v != "" {
		t.Fatalf("still installed after purge: %s", v)
	}
	for _, p := range append(packaged, "/etc/mpshim", "/var/lib/mpshim", "/usr/lib/mpshim", "/usr/share/doc/mpshim", enabledLink,
		"/var/lib/systemd/deb-systemd-helper-enabled/isolator.service.dsh-also",
		"/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/isolator.service") {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after purge", p)
		}
	}
	phase("purged")
	_, uerr := user.Lookup("mpshim-ins")
	_, gerr := user.LookupGroup("mpshim-ins")
	switch {
	case userBefore && (uerr != nil || gerr != nil):
		t.Errorf("purge removed the user or group mpshim-ins, which existed before the package: %v, %v", uerr, gerr)
	case !userBefore && (uerr == nil || gerr == nil):
		pw, _ := exec.Command("getent", "passwd", "mpshim-ins").CombinedOutput()
		t.Errorf("user or group mpshim-ins left after purge: %s", pw)
	}
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// serveInstalled runs /usr/bin/isolator with a test configuration in a
// topology, as the unit would (its capability bounding set, no_new_privs,
// readiness on NOTIFY_SOCKET), and nginx through /usr/bin/mpshim run.
func serveInstalled(t *testing.T) {
	tp := topo.New(t, topo.Config{Uplinks: 2})
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	reg, api := filepath.Join(dir, "isolator.sock"), filepath.Join(dir, "api.sock")
	conf := fmt.Sprintf("ins: 2\nsocket: %s\napi: %s\nstate_dir: %s\nallow_uids: [0, 33]\nuplinks:\n", reg, api, filepath.Join(dir, "state"))
	for i, u := range harness.DefaultUplinks(tp) {
		conf += fmt.Sprintf("  - {name: up%d, interface: %s, pool4: %s, gateway4: %s}\n", i, u.Interface, u.Pool4, u.Gateway4)
	}
	confPath := filepath.Join(dir, "isolator.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	loadConfig(t, confPath)
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	caps := boundingSet(t, "/lib/systemd/system/isolator.service")
	cmd := tp.GW.Command(context.Background(), "/usr/bin/setpriv", "--bounding-set", caps, "--no-new-privs",
		"/usr/bin/isolator", "run", "--config", confPath)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(dir, "notify.sock"))
	var log bytes.Buffer
	cmd.Stderr = &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("installed isolator did not stop within 10 s of SIGTERM")
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("installed isolator (bounding set %s) log:\n%s", caps, log.String())
		}
	})
	b := make([]byte, 256)
	for deadline := time.Now().Add(60 * time.Second); ; {
		notify.SetReadDeadline(time.Now().Add(time.Second))
		n, err := notify.Read(b)
		if err == nil {
			if string(b[:n]) != "READY=1" {
				t.Fatalf("installed isolator's first notification %q, want READY=1", b[:n])
			}
			break
		}
		select {
		case <-done:
			t.Fatalf("installed isolator exited before READY=1")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("installed isolator: no READY=1 within 60 s: %v", err)
		}
	}
	out, err := exec.Command("/usr/bin/isolator", "--api", api, "ls").CombinedOutput()
	if err != nil || strings.Count(string(out), "running") != 2 {
		t.Fatalf("installed isolator ls: %v\n%s", err, out)
	}
	nginx := harness.StartNginx(t, harness.NginxOptions{
		NS:       tp.App,
		Launcher: []string{"/usr/bin/mpshim", "run", "--socket", reg, "--"},
		Files:    harness.RandomFiles(map[string]int{"1m.bin": 1 << 20}),
		Config: func(dir, root string) string {
			return fmt.Sprintf("worker_processes 2;\nevents {}\nhttp {\n    log_format status '$status';\n    access_log %s/access.log status;\n    server { listen 80; root %s; }\n}\n", dir, root)
		},
	})
	urls := 0
	for i := range tp.Uplinks {
		for ins := range 2 {
			addr := tp.Uplinks[i].HostAddr4(ins)
			harness.Fetch(t, tp.WAN, nil, "http://"+addr.String()+"/1m.bin", nginx.Files["1m.bin"])
			urls++
		}
	}
	if total, bad := nginx.Served(); total != urls || bad != 0 {
		t.Fatalf("nginx served %d (%d not 2xx), want %d", total, bad, urls)
	}
}
