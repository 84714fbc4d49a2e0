package isolator_test

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// TestClosePathsEndRecords: a C program under the shim finishes TCP
// connections (both sides closed, so the INS has closed its end of each
// socketpair and only the app's close can end the INS's record), then
// closes them by each way a descriptor can go: close, dup2 and dup3 onto
// it, close_range and closefrom. While the program still runs, the INS must
// hold no record of them.
func TestClosePathsEndRecords(t *testing.T) {
	topo.RequireRoot(t)
	lib := harness.Binary(t, "libmpshim.so")
	prog := harness.BuildC(t, "testdata/closepaths.c")
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	d := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	port := wanServer(t, tp, echo)
	const conns = 16
	for _, way := range []string{"close", "dup2", "dup3", "close_range", "closefrom"} {
		t.Run(way, func(t *testing.T) {
			// Nothing else uses this isolator: once the records of the
			// previous run's exited process are gone (the isolator keeps
			// a gone process's sockets for its 10 s exec grace), there
			// are none.
			waitRecords(t, d, 0, 15*time.Second, "before the run")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := tp.App.Command(ctx, prog, way, strconv.Itoa(conns), tp.Uplinks[0].WANAddr4.String(), strconv.Itoa(port))
			cmd.Env = []string{"LD_PRELOAD=" + lib, "MPSHIM_SOCKET=" + d.Socket}
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				stdin.Close()
				if err := cmd.Wait(); err != nil {
					t.Errorf("closepaths %s: %v\n%s", way, err, stderr.String())
				}
			}()
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if want := fmt.Sprintf("closed %d\n", conns); line != want {
				t.Fatalf("closepaths %s said %q (%v), want %q\n%s", way, line, err, want, stderr.String())
			}
			// The process lives on: its records must go because of the
			// closes, not because it exited.
			waitRecords(t, d, 0, 5*time.Second, fmt.Sprintf("after %d sockets finished and were closed by %s", conns, way))
		})
	}
}

// waitRecords waits up to limit for the INS to hold want socket records in
// all.
func waitRecords(t *testing.T, d *harness.Isolator, want int, limit time.Duration, when string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		n := socketRecords(t, d)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s the INS hold %d socket records, want %d", when, n, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// socketRecords is the number of socket records of all INS.
func socketRecords(t *testing.T, d *harness.Isolator) int {
	t.Helper()
	infos, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, in := range infos {
		n += in.Sockets
	}
	return n
}
