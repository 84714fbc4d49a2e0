package shim

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
)

// cflags are the top-level Makefile's SHIM_CFLAGS.
var cflags = []string{"-std=gnu11", "-O2", "-g", "-fPIC", "-fvisibility=hidden",
	"-Wall", "-Wextra", "-Werror", "-Imsgproto", "-Iring"}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

func run(dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	return cmd.CombinedOutput()
}

// BuildShim compiles libmpshim.so and the test programs once per test
// binary into a temporary directory, with the flags the Makefile uses.
func buildShim(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "mpshim-test-")
		if buildErr != nil {
			return
		}
		srcs, _ := filepath.Glob(filepath.Join(root, "shim", "*.c"))
		// ring/mpring.c defines _GNU_SOURCE itself, so it is compiled
		// on its own; everything else exactly as the Makefile does.
		ringObj := filepath.Join(buildDir, "mpring.o")
		steps := [][]string{
			append(append([]string{}, cflags...), "-c", "-o", ringObj, "ring/mpring.c"),
			append(append(append([]string{}, cflags...), "-D_GNU_SOURCE", "-shared", "-o",
				filepath.Join(buildDir, "libmpshim.so")), append(srcs, ringObj, "-ldl", "-pthread")...),
			{"-O2", "-Wall", "-Wextra", "-Werror", "-o", filepath.Join(buildDir, "unit"), "shim/testdata/unit.c"},
			{"-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Wextra", "-Werror", "-o", filepath.Join(buildDir, "unit-fortify"), "shim/testdata/unit.c"},
			{"-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", filepath.Join(buildDir, "libearly.so"), "shim/testdata/early.c"},
		}
		for _, s := range steps {
			if out, err := run(root, "cc", s...); err != nil {
				buildErr, buildOut = err, append([]byte("cc "+strings.Join(s, " ")+"\n"), out...)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatalf("building the shim: %v\n%s", buildErr, buildOut)
	}
	return buildDir
}

// needRoot skips without root, except under CI where it fails.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (network namespaces via unshare -n)")
	}
	t.Skip("needs root: the cases run in a private network namespace (unshare -n)")
}

// inNetns runs prog with LD_PRELOAD in a fresh network namespace with only
// loopback up: nothing a case does can leave the machine.
func inNetns(t *testing.T, env []string, preload string, prog string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	needRoot(t)
	script := `ip link set lo up && LD_PRELOAD="$PRELOAD" exec "$@"`
	cmd := exec.Command("unshare", append([]string{"-n", "sh", "-c", script, "sh", prog}, args...)...)
	cmd.Env = append(append(os.Environ(), "PRELOAD="+preload, "MPSHIM_SOCKET=/nonexistent/mpshim-test.sock"), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

const unreachable = "isolator unreachable at /nonexistent/mpshim-test.sock"

func TestUnitCases(t *testing.T) {
	dir := buildShim(t)
	lib := filepath.Join(dir, "libmpshim.so")
	cases := []struct {
		name string
		env  []string
		// warnings is how many "isolator unreachable" lines stderr must
		// hold: one per process image that needed the isolator.
		warnings int
	}{
		{"native", nil, 0},
		{"loopback", nil, 0},
		{"loopback-ins", []string{"MPSHIM_LOOPBACK=ins"}, 1},
		{"fail-closed", nil, 1},
		{"fail-open", []string{"MPSHIM_FAIL=open"}, 1},
		{"table", nil, 1},
		{"fork", nil, 1},
		{"exec", nil, 2},
		{"log", []string{"MPSHIM_LOG=debug"}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, err := inNetns(t, c.env, lib, filepath.Join(dir, "unit"), c.name)
			if err != nil || strings.Contains(out, "FAIL") || !strings.Contains(out, "ok: ") {
				t.Fatalf("unit %s: %v\nstdout:\n%s\nstderr:\n%s", c.name, err, out, errOut)
			}
			if n := strings.Count(errOut, unreachable); n != c.warnings {
				t.Errorf("stderr has %d isolator-unreachable lines, want %d:\n%s", n, c.warnings, errOut)
			}
			if c.warnings > 0 {
				want := "network sockets fail with ENETUNREACH"
				if strings.Contains(strings.Join(c.env, " "), "MPSHIM_FAIL=open") {
					want = "sockets stay on the kernel"
				}
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr lacks %q:\n%s", want, errOut)
				}
			}
			if c.name == "log" {
				for _, w := range []string{"socket(2, 0x1, 0) = 3", "close(3) = 0"} {
					if !strings.Contains(errOut, w) {
						t.Errorf("MPSHIM_LOG=debug trace lacks %q:\n%s", w, errOut)
					}
				}
			} else if strings.Contains(errOut, "close(") {
				t.Errorf("trace printed without MPSHIM_LOG:\n%s", errOut)
			}
		})
	}
}

// TestFortified runs the native checks in a program built with
// _FORTIFY_SOURCE, whose recv/recvfrom reach libc as __recv_chk and
// __recvfrom_chk.
func TestFortified(t *testing.T) {
	dir := buildShim(t)
	prog := filepath.Join(dir, "unit-fortify")
	imports := dynSymbols(t, prog, false)
	for _, s := range []string{"__recv_chk", "__recvfrom_chk"} {
		if !imports[s] {
			t.Fatalf("%s does not import %s; the fortified path is not exercised", prog, s)
		}
	}
	out, errOut, err := inNetns(t, nil, filepath.Join(dir, "libmpshim.so"), prog, "native")
	if err != nil || strings.Contains(out, "FAIL") {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	out, errOut, err = inNetns(t, nil, filepath.Join(dir, "libmpshim.so"), prog, "fail-closed")
	if err != nil || strings.Contains(out, "FAIL") {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
}

// TestEarlyConstructor checks that a library constructor that runs before
// the shim's own still gets interposed, correctly configured calls.
func TestEarlyConstructor(t *testing.T) {
	dir := buildShim(t)
	lib, early := filepath.Join(dir, "libmpshim.so"), filepath.Join(dir, "libearly.so")
	for _, order := range []string{early + " " + lib, lib + " " + early} {
		out, errOut, err := inNetns(t, nil, order, "/bin/true")
		if err != nil || !strings.Contains(out, "early: connect=-1 ENETUNREACH") {
			t.Errorf("LD_PRELOAD=%q: %v\nstdout: %s\nstderr: %s", order, err, out, errOut)
		}
	}
}

// dynSymbols lists a binary's dynamic symbols: defined ones or imports.
func dynSymbols(t *testing.T, path string, defined bool) map[string]bool {
	t.Helper()
	flag := "--undefined-only"
	if defined {
		flag = "--defined-only"
	}
	out, err := exec.Command("nm", "-D", flag, path).CombinedOutput()
	if err != nil {
		t.Fatalf("nm %s: %v\n%s", path, err, out)
	}
	syms := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		name := f[len(f)-1]
		if i := strings.Index(name, "@"); i >= 0 {
			name = name[:i]
		}
		syms[name] = true
	}
	return syms
}

// Exported is the exact list of symbols libmpshim.so interposes. Nothing
// else may leak out of the library (internal helpers are hidden).
var Exported = []string{
	"__read_chk", "__recv_chk", "__recvfrom_chk", "accept", "accept4", "bind", "close", "close_range",
	"closefrom", "connect", "dup", "dup2", "dup3", "epoll_ctl", "execl", "execle", "execlp",
	"execv", "execve", "execveat", "execvp", "execvpe", "fcntl", "fcntl64", "fexecve", "fork",
	"getaddrinfo", "gethostbyaddr", "gethostbyaddr_r", "gethostbyname", "gethostbyname2",
	"gethostbyname2_r", "gethostbyname_r", "getnameinfo",
	"getpeername", "getsockname", "getsockopt", "ioctl", "listen", "posix_spawn",
	"posix_spawnp", "read", "readv", "recv", "recvfrom", "recvmmsg", "recvmsg", "send", "sendmmsg", "sendmsg",
	"sendto", "setsockopt", "shutdown", "socket", "write", "writev",
}

func TestExportedSymbols(t *testing.T) {
	dir := buildShim(t)
	got := dynSymbols(t, filepath.Join(dir, "libmpshim.so"), true)
	var names []string
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	want := append([]string{}, Exported...)
	sort.Strings(want)
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("exported symbols differ\n got: %v\nwant: %v", names, want)
	}
}
