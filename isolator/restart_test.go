package isolator

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		deaths int
		want   time.Duration
	}{
		{0, 0}, {1, 0}, {2, firstBackoff}, {3, 2 * firstBackoff}, {4, 4 * firstBackoff},
		{12, maxBackoff}, {1000, maxBackoff},
	} {
		if got := backoff(tc.deaths); got != tc.want {
			t.Errorf("backoff(%d) = %v, want %v", tc.deaths, got, tc.want)
		}
	}
}

// TestExitReason runs real processes that end in each way.
func TestExitReason(t *testing.T) {
	for _, tc := range []struct {
		script, want string
	}{
		{"exit 0", "exited"},
		{"exit 3", "exit status 3"},
		{"kill -9 $$", "killed by signal 9 (killed)"},
		{"kill -TERM $$", "killed by signal 15 (terminated)"},
	} {
		cmd := exec.Command("/bin/sh", "-c", tc.script)
		err := cmd.Run()
		if got := exitReason(cmd.ProcessState, err); !strings.EqualFold(got, tc.want) {
			t.Errorf("%q: %q, want %q", tc.script, got, tc.want)
		}
	}
}
