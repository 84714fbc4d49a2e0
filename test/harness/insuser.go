package harness

import (
	"os"
	"os/exec"
	"os/user"
	"sync"
	"testing"

	"github.com/mpshim/mpshim/isolator/config"
)

var insUserMu sync.Mutex

// EnsureINSUser makes sure the system user every INS runs as by default
// (config.DefaultINSUser) exists, creating it as scripts/deps.sh does when
// it is missing. Without root and without the user it skips the test (or
// fails it under CI=true).
func EnsureINSUser(t testing.TB) {
	t.Helper()
	insUserMu.Lock()
	defer insUserMu.Unlock()
	name := config.DefaultINSUser
	if _, err := user.Lookup(name); err == nil {
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("user %s missing and not root to create it: run scripts/deps.sh test", name)
		}
		t.Skipf("user %s missing: run scripts/deps.sh test as root", name)
	}
	out, err := exec.Command("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
		"--shell", "/usr/sbin/nologin", "--user-group", name).CombinedOutput()
	// Another test process may have created it meanwhile.
	if _, lerr := user.Lookup(name); lerr != nil {
		t.Fatalf("creating user %s: %v: %s", name, err, out)
	}
}
