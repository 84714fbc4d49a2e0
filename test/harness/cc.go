package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BuildC compiles the C program src (relative to the test's package
// directory) with the system compiler, warnings as errors, into a
// world-readable temporary directory, and returns the binary's path.
// flags are added to the command line (-pthread, …). It fails the test if
// the compiler is missing or the program does not build.
func BuildC(t testing.TB, src string, flags ...string) string {
	t.Helper()
	NeedFiles(t, "/usr/bin/cc")
	bin := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(src), ".c"))
	args := append([]string{"-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"}, flags...)
	if out, err := exec.Command("cc", append(args, "-o", bin, src)...).CombinedOutput(); err != nil {
		t.Fatalf("cc %s: %v\n%s", src, err, out)
	}
	// Programs may run as another user (an app that drops privileges).
	if err := os.Chmod(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}
