package isolator_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// TestProfiles runs a daemon with --pprof and fetches, as go tool pprof
// would, its own profiles and a heap and a CPU profile of its INS, which
// writes them through the control channel from inside its sandbox.
func TestProfiles(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/bin/curl")
	tp := topo.New(t, topo.Config{Uplinks: 1})
	const addr = "127.0.0.1:6061" // loopback of the topology's gw namespace
	d := harness.StartIsolator(t, tp, harness.Options{INS: 1, Args: []string{"--pprof", addr}})
	infos, err := d.List()
	if err != nil || len(infos) != 1 {
		t.Fatalf("isolator ls: %v %v", infos, err)
	}
	get := func(path string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return tp.GW.Command(ctx, "curl", "-sS", "--fail", "--max-time", "20", "http://"+addr+path).Output()
	}
	var index []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if index, err = get("/debug/pprof/"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !strings.Contains(string(index), "goroutine") {
		t.Fatalf("daemon profile index: %v\n%s", err, index)
	}
	id := infos[0].ID
	for _, path := range []string{"/debug/pprof/heap", fmt.Sprintf("/debug/ins/%d/heap", id), fmt.Sprintf("/debug/ins/%d/profile?seconds=1", id)} {
		b, err := get(path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		// pprof profiles are gzip-compressed protocol buffers.
		if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Fatalf("GET %s: %d bytes, not a profile", path, len(b))
		}
	}
	// ?debug=1 is the text form, with the runtime's memory statistics.
	if b, err := get(fmt.Sprintf("/debug/ins/%d/heap?debug=1", id)); err != nil || !strings.Contains(string(b), "# HeapAlloc = ") {
		t.Fatalf("GET /debug/ins/%d/heap?debug=1: %v\n%.300s", id, err, b)
	}
	if _, err := get("/debug/ins/99/heap"); err == nil {
		t.Fatal("profile of a missing INS answered")
	}
	// The INS still serves after being profiled.
	if infos, err := d.List(); err != nil || infos[0].State != "running" {
		t.Fatalf("after profiling: %v %v", infos, err)
	}
}
