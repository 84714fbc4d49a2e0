package harness

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/test/topo"
)

// ReadPIDFile returns the pid a server wrote to path, or 0 if there is none
// (yet).
func ReadPIDFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Children lists the child processes of pid (a server's workers).
func Children(pid int) []int {
	out, _ := exec.Command("pgrep", "-P", strconv.Itoa(pid)).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// Fetch gets url with curl run inside ns (with env, if given) and fails
// the test unless the body is want, byte for byte.
func Fetch(t testing.TB, ns *topo.NS, env []string, url string, want []byte) {
	t.Helper()
	cmd := ns.Command(context.Background(), "curl", "-sS", "-g", "--fail", "--max-time", "20", url)
	if env != nil {
		cmd.Env = env
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v", url, err)
	}
	if sha256.Sum256(out) != sha256.Sum256(want) {
		t.Fatalf("curl %s: %d bytes, not the expected %d (sha256 differs)", url, len(out), len(want))
	}
}
