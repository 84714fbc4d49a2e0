// Package launch runs real programs through the mpshim launcher against a
// real isolator in a test topology: nginx started by `mpshim run` serves
// wan through the INS, curl under `mpshim` fetches from wan through the
// INS, `mpshim doctor` reports a working set-up, a refused uid, a static C
// program and a Go program, and the launcher's exit statuses and messages
// when the isolator is absent or refuses.
package launch

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// mpshim runs the launcher in ns with args and returns its combined output
// and exit status.
func mpshim(t *testing.T, ns *topo.NS, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Command(ctx, harness.Binary(t, "mpshim"), args...)
	} else {
		cmd = exec.CommandContext(ctx, harness.Binary(t, "mpshim"), args...)
	}
	if env != nil {
		cmd.Env = env
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("mpshim %v: %v\n%s", args, err, out)
	}
	return string(out), 0
}

// TestRunNginxAndCurl serves nginx started by `mpshim run` to curl in wan
// through every INS address, and runs curl under the short form `mpshim
// curl` in the app namespace (loopback only) against a kernel nginx in wan.
func TestRunNginxAndCurl(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl")
	bin := harness.Binary(t, "mpshim")
	harness.Binary(t, "libmpshim.so")
	tp := topo.New(t, topo.Config{Uplinks: 2})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: []string{"--allow-uid", "0", "--allow-uid", "33"}})
	infos, err := iso.List()
	if err != nil {
		t.Fatal(err)
	}
	n := harness.StartNginx(t, harness.NginxOptions{
		NS:       tp.App,
		Launcher: []string{bin, "run", "--socket", iso.Socket, "--"},
		Files:    harness.RandomFiles(map[string]int{"1m.bin": 1 << 20}),
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 2;
events { worker_connections 1024; }
http {
    log_format status '$status';
    access_log %[1]s/access.log status;
    server { listen 80; root %[2]s; }
}
`, dir, root)
		},
	})
	// nginx in the app namespace has only loopback: every byte wan gets
	// went through the INS, so the master exec'ed by mpshim and the workers
	// it forked run under the shim.
	fetched := 0
	for _, in := range infos {
		for _, u := range in.Uplinks {
			addr := strings.Split(u.Addr4, "/")[0]
			harness.Fetch(t, tp.WAN, nil, "http://"+addr+"/1m.bin", n.Files["1m.bin"])
			fetched++
		}
	}
	if fetched < 4 {
		t.Fatalf("fetched through %d INS addresses, want 4 (2 INS × 2 uplinks)", fetched)
	}
	if total, bad := n.Served(); total != fetched || bad != 0 {
		t.Fatalf("nginx logged %d requests (%d not 2xx), want %d, all 2xx", total, bad, fetched)
	}

	// curl under the short form, out through the INS to a kernel nginx in
	// wan: the app namespace has only loopback, so the bytes can only have
	// come through the INS.
	page := make([]byte, 256<<10)
	rand.Read(page)
	harness.StartNginx(t, harness.NginxOptions{NS: tp.WAN, Files: map[string][]byte{"p.bin": page}, Config: func(dir, root string) string {
		return fmt.Sprintf("events {}\nhttp { access_log off; server { listen %s:8080; root %s; } }\n", tp.Uplinks[0].WANAddr4, root)
	}})
	url := fmt.Sprintf("http://%s/p.bin", net.JoinHostPort(tp.Uplinks[0].WANAddr4.String(), "8080"))
	env := append(os.Environ(), "MPSHIM_SOCKET="+iso.Socket)
	out, code := mpshim(t, tp.App, env, "curl", "-sS", "--max-time", "20", url)
	if code != 0 || out != string(page) {
		t.Fatalf("mpshim curl %s: status %d, %d bytes (want %d): %.300q", url, code, len(out), len(page), out)
	}
	// The same curl without the launcher cannot leave the app namespace.
	if b, err := tp.App.Command(context.Background(), "curl", "-sS", "--max-time", "5", url).CombinedOutput(); err == nil {
		t.Fatalf("curl without the shim reached %s from the app namespace: %.200q", url, b)
	}
}

// TestAbsentIsolator checks the exit status and the message when nothing
// answers: no socket file, and a socket file nobody listens on.
func TestAbsentIsolator(t *testing.T) {
	harness.Binary(t, "libmpshim.so")
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	marker := filepath.Join(dir, "ran")
	for _, sock := range []string{filepath.Join(dir, "none.sock"), stale} {
		for _, args := range [][]string{
			{"run", "--socket", sock, "--", "touch", marker},
			{"touch", marker}, // short form, socket from the environment
		} {
			out, code := mpshim(t, nil, append(os.Environ(), "MPSHIM_SOCKET="+sock), args...)
			if code != 69 || !strings.Contains(out, "does not answer on "+sock) {
				t.Errorf("mpshim %v with no isolator: status %d, output %q; want 69 naming the socket", args, code, out)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatalf("mpshim %v ran the command although the isolator is absent", args)
			}
		}
	}
	// --fail open warns and runs the command.
	out, code := mpshim(t, nil, nil, "run", "--fail", "open", "--socket", stale, "--", "sh", "-c", `touch "$1"; echo "$MPSHIM_FAIL $LD_PRELOAD"`, "sh", marker)
	if code != 0 || !strings.Contains(out, "warning") || !strings.Contains(out, "open "+harness.Binary(t, "libmpshim.so")) {
		t.Fatalf("mpshim run --fail open: status %d, output %q", code, out)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("mpshim run --fail open did not run the command: %v", err)
	}
	// The environment and the descriptor limit reach the command as they
	// are, LD_PRELOAD and the variables of the flags given aside.
	env := append(os.Environ(), "MPSHIM_TEST_VAR=a b=c", "LD_PRELOAD=/lib/none.so")
	show := []string{"sh", "-c", `ulimit -Sn; env | LC_ALL=C sort`}
	direct, err := exec.Command(show[0], show[1:]...).Output()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(harness.Binary(t, "mpshim"), append([]string{"run", "--fail", "open", "--socket", stale, "--"}, show...)...)
	cmd.Env = env
	under, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	lib := harness.Binary(t, "libmpshim.so")
	wantLines := strings.Split(strings.TrimSpace(string(direct)), "\n")
	var filtered []string
	for _, l := range wantLines {
		if !strings.HasPrefix(l, "LD_PRELOAD=") && !strings.HasPrefix(l, "MPSHIM_FAIL=") && !strings.HasPrefix(l, "MPSHIM_SOCKET=") {
			filtered = append(filtered, l)
		}
	}
	filtered = append(filtered, "LD_PRELOAD=/lib/none.so:"+lib, "MPSHIM_FAIL=open", "MPSHIM_SOCKET="+stale, "MPSHIM_TEST_VAR=a b=c")
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(under)), "\n") {
		if !strings.HasPrefix(l, "_=") && !strings.HasPrefix(l, "SHLVL=") && !strings.HasPrefix(l, "PWD=") {
			got = append(got, l)
		}
	}
	filteredNoNoise := filtered[:0:0]
	for _, l := range filtered {
		if !strings.HasPrefix(l, "_=") && !strings.HasPrefix(l, "SHLVL=") && !strings.HasPrefix(l, "PWD=") {
			filteredNoNoise = append(filteredNoNoise, l)
		}
	}
	slices.Sort(got)
	slices.Sort(filteredNoNoise)
	if !slices.Equal(got, filteredNoNoise) {
		t.Errorf("environment under mpshim run:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(filteredNoNoise, "\n"))
	}
	if out, code := mpshim(t, nil, nil, "run", "--fail", "open", "--socket", stale, "--", "no-such-command-mpshim"); code != 127 {
		t.Fatalf("missing command: status %d (%q), want 127", code, out)
	}
	if out, code := mpshim(t, nil, nil, "run", "--loopback", "bogus", "--", "true"); code != 2 {
		t.Fatalf("bad --loopback: status %d (%q), want 2", code, out)
	}
	if out, code := mpshim(t, nil, nil, "run", "--lib", filepath.Join(dir, "nolib.so"), "--", "true"); code != 125 || !strings.Contains(out, "nolib.so") {
		t.Fatalf("missing --lib: status %d (%q), want 125 naming it", code, out)
	}
}

// TestDoctor runs `mpshim doctor` against a working isolator (everything
// ok), against one that does not allow this uid and has no INS, and on a
// static C program and a Go program.
func TestDoctor(t *testing.T) {
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	out, code := mpshim(t, nil, nil, "doctor", "--socket", iso.Socket, "--api", iso.API, "/usr/bin/curl")
	for _, want := range []string{"ok    library ", "ok    the isolator answers on " + iso.Socket, "ok    uid 0 gid 0 may register",
		"ok    1 of 1 INS running", "ok    uplink up0 (", "up in 1 of 1 INS", "ok    /usr/bin/curl is dynamically linked"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q", want)
		}
	}
	if code != 0 || strings.Contains(out, "FAIL") {
		t.Errorf("doctor against a working isolator: status %d", code)
	}
	t.Logf("doctor:\n%s", out)

	// A Go binary (the isolator itself) and a static C program.
	src := filepath.Join(t.TempDir(), "hello.c")
	os.WriteFile(src, []byte("#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n"), 0o644)
	static := harness.BuildC(t, src, "-static")
	for _, tc := range []struct{ path, want string }{
		{static, "is statically linked"},
		{iso.Bin, "is a Go binary"},
	} {
		out, code := mpshim(t, nil, nil, "doctor", "--socket", iso.Socket, "--api", iso.API, tc.path)
		if code != 1 || !strings.Contains(out, "FAIL  "+tc.path+" "+tc.want) {
			t.Errorf("doctor %s: status %d, output:\n%s\nwant status 1 and FAIL %q", tc.path, code, out, tc.want)
		}
	}

	// An isolator without INS that allows another uid only.
	refusing := harness.StartIsolator(t, tp, harness.Options{INS: 0, Uplinks: []harness.UplinkSpec{}, Args: []string{"--allow-uid", "33"}})
	out, code = mpshim(t, nil, nil, "doctor", "--socket", refusing.Socket, "--api", refusing.API)
	for _, want := range []string{"ok    the isolator answers on " + refusing.Socket, "FAIL  uid 0 gid 0 may not register", "FAIL  no INS running", "FAIL  no uplinks configured"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor against a refusing isolator lacks %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("doctor against a refusing isolator: status %d, want 1", code)
	}
	if out, code := mpshim(t, nil, nil, "run", "--socket", refusing.Socket, "--", "true"); code != 77 || !strings.Contains(out, "does not allow uid 0") {
		t.Errorf("mpshim run refused: status %d, output %q; want 77", code, out)
	}
}
