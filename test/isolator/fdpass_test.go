package isolator_test

import (
	"context"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// TestShimFDPassUnderSlotPressure: 320 threads of one process make calls
// through libmpshim.so at once. 256 of them connect to an address on the
// uplink that nobody answers, each holding one of the ring's 256 response
// slots for seconds; the other 64 then create sockets, whose creation
// passes a descriptor to the isolator and must wait for a slot longer than
// the isolator waits for a passed descriptor's request (1 s). Every one of
// them must get its socket and echo a line through it.
func TestShimFDPassUnderSlotPressure(t *testing.T) {
	topo.RequireRoot(t)
	lib := harness.Binary(t, "libmpshim.so")
	prog := harness.BuildC(t, "testdata/fdstorm.c", "-pthread")
	tp := topo.New(t, topo.Config{Uplinks: 1})
	d := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	port := wanServer(t, tp, echo)
	up := tp.Uplinks[0]
	// An address on the uplink's subnet that no host holds: the INS's
	// neighbour resolution fails after seconds.
	hole := up.WANAddr4.As4()
	hole[3] = 222
	blackhole := net.JoinHostPort(net.IP(hole[:]).String(), "9")
	echoAddr := net.JoinHostPort(up.WANAddr4.String(), strconv.Itoa(port))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := tp.App.Command(ctx, prog, "256", "64", blackhole, echoAddr)
	cmd.Env = []string{"LD_PRELOAD=" + lib, "MPSHIM_SOCKET=" + d.Socket}
	out, err := cmd.CombinedOutput()
	t.Logf("fdstorm:\n%s", out)
	if err != nil {
		t.Fatalf("fdstorm: %v", err)
	}
	if m := regexp.MustCompile(`workers ok (\d+)/64`).FindSubmatch(out); m == nil || string(m[1]) != "64" {
		t.Fatalf("not every worker got its socket through the shim")
	}
	m := regexp.MustCompile(`longest wait ([\d.]+) s`).FindSubmatch(out)
	if m == nil {
		t.Fatal("fdstorm did not report its longest wait")
	}
	// The workers must have waited for slots longer than the isolator
	// holds a passed descriptor, or the test proved nothing.
	if w, _ := strconv.ParseFloat(string(m[1]), 64); w < 1.2 {
		t.Fatalf("longest worker wait %.1f s: the holders did not keep the ring's slots (want > 1.2 s)", w)
	}
	if regexp.MustCompile(`holders: \d+ returned before`).Match(out) || regexp.MustCompile(`connected to the black hole`).Match(out) {
		t.Fatal("the holders did not all block in connect")
	}
}
