// Package clients runs real client programs under libmpshim.so in an app
// namespace that has only loopback, so that every connection they open goes
// out through the INS: curl against a kernel nginx in wan, and iperf3 as a
// client against a kernel iperf3 server in wan.
package clients

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

func shimEnv(t *testing.T, iso *harness.Isolator) []string {
	return append(os.Environ(), "LD_PRELOAD="+harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+iso.Socket)
}

// TestCurl fetches a 1 MiB file with curl under the shim from a kernel
// nginx in wan, over IPv4 and IPv6, and checks it byte for byte.
func TestCurl(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl")
	tp := topo.New(t, topo.Config{Uplinks: 2})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	page := make([]byte, 1<<20)
	rand.Read(page)
	if err := os.WriteFile(filepath.Join(dir, "f.bin"), page, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events {}
http { access_log off; server { listen 8080; listen [::]:8080; root %[1]s; } }
`, dir)), 0o644)
	ctx := context.Background()
	if _, err := tp.WAN.Start(ctx, "/usr/sbin/nginx", "-c", conf, "-e", filepath.Join(dir, "error.log")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	for _, u := range tp.Uplinks {
		// Each address is on the subnet of one uplink; the uplinks have an
		// IPv4 gateway but no IPv6 one, so an IPv6 flow only has a route
		// on its own uplink and must be placed there.
		for _, url := range []string{
			fmt.Sprintf("http://%s:8080/f.bin", u.WANAddr4),
			fmt.Sprintf("http://[%s]:8080/f.bin", u.WANAddr6),
		} {
			harness.Fetch(t, tp.App, shimEnv(t, iso), url, page)
		}
	}
	// Without the isolator the app namespace has no way out at all.
	cmd := tp.App.Command(ctx, "curl", "-sS", "--max-time", "3", fmt.Sprintf("http://%s:8080/f.bin", tp.Uplinks[0].WANAddr4))
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("curl without the shim reached wan from the app namespace: %s", out)
	}
}

type iperfResult struct {
	End struct {
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

func runIperf(t *testing.T, cmd interface{ Output() ([]byte, error) }, what string) iperfResult {
	t.Helper()
	out, err := cmd.Output()
	var r iperfResult
	if jerr := json.Unmarshal(out, &r); jerr != nil || err != nil || r.Error != "" {
		t.Fatalf("%s: %v %v %s\n%s", what, err, jerr, r.Error, out)
	}
	if r.End.SumReceived.Bytes <= 0 {
		t.Fatalf("%s: received %d bytes", what, r.End.SumReceived.Bytes)
	}
	t.Logf("%s: %.0f Mbit/s", what, r.End.SumReceived.BitsPerSecond/1e6)
	return r
}

// TestIperf3 runs iperf3 under the shim as a client to a kernel iperf3 in
// wan, with one stream and with four.
func TestIperf3(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/bin/iperf3")
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	wanAddr := tp.Uplinks[0].WANAddr4.String()

	if _, err := tp.WAN.Start(ctx, "iperf3", "-s", "-B", wanAddr, "-p", "5201"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	for _, streams := range []string{"1", "4"} {
		c := tp.App.Command(ctx, "iperf3", "-c", wanAddr, "-p", "5201", "-t", "2", "-P", streams, "-J")
		c.Env = shimEnv(t, iso)
		runIperf(t, c, "iperf3 client under the shim, -P "+streams)
	}
}
