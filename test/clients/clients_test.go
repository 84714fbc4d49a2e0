// Package clients runs real client programs under libmpshim.so in an app
// namespace that has only loopback, so that every connection they open goes
// out through the INS: curl against a kernel nginx in wan, and iperf3 as a
// client against a kernel iperf3 server in wan; and iperf3 as a server under
// the shim, listening through the INS, for a kernel iperf3 client in wan.
package clients

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// iperfSum is one of iperf3's JSON byte totals.
type iperfSum struct {
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
}

// iperfResult is the part of iperf3's -J output the tests read. In a
// client's output sum_sent and sum_received are the sender's and the
// receiver's totals (the remote side's as it reported them); in a server's
// output only its own role's total is filled in.
type iperfResult struct {
	End struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
		Streams     []struct {
			Sender   iperfSum `json:"sender"`
			Receiver iperfSum `json:"receiver"`
		} `json:"streams"`
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

// TestIperf3Server runs one iperf3 server under the shim in app, listening
// through the INS, and runs a kernel iperf3 client in wan against it: one and
// four streams, client sending and (-R) server sending. The server re-creates
// its listener on the same port after every test. Both sides must report
// throughput, every stream must carry data, both ends must agree on what the
// server counted, and the receiver must have counted what the sender sent
// less at most what the buffers between them hold when iperf3 stops counting.
func TestIperf3Server(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/bin/iperf3")
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	insAddr := tp.Uplinks[0].HostAddr4(0).String()
	// What can sit between the two counters when the client ends the test:
	// the wan kernel's send buffer and the INS's receive buffer (sending
	// client), or the INS's send buffer and the wan kernel's receive buffer
	// (-R), plus both socketpair ends, per stream.
	wmem, err := tp.WAN.Sysctl("net.ipv4.tcp_wmem")
	if err != nil {
		t.Fatal(err)
	}
	rmem, err := tp.WAN.Sysctl("net.ipv4.tcp_rmem")
	if err != nil {
		t.Fatal(err)
	}
	kernelMax := max(lastInt(t, wmem), lastInt(t, rmem))
	const insBufMax, pairMax = 8 << 20, 1 << 20
	perStream := kernelMax + insBufMax + pairMax

	srv := tp.App.Command(ctx, "iperf3", "-s", "-J", "-p", "5201")
	srv.Env = shimEnv(t, iso)
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	srv.Stderr = &stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Process.Kill()
		srv.Wait()
		if t.Failed() {
			t.Logf("iperf3 server stderr:\n%s", stderr.String())
		}
	}()
	// The server prints one JSON document per test.
	results := make(chan iperfResult, 8)
	go func() {
		defer close(results)
		dec := json.NewDecoder(stdout)
		for {
			var r iperfResult
			if err := dec.Decode(&r); err != nil {
				return
			}
			results <- r
		}
	}()

	cases := []struct {
		streams int
		reverse bool
	}{{1, false}, {4, false}, {1, true}, {4, true}}
	for i, tc := range cases {
		name := fmt.Sprintf("-P %d", tc.streams)
		if tc.reverse {
			name += " -R"
		}
		// Wait for the server's i+1-th listener: iperf3 closes its listener
		// at the end of each test and opens a new one.
		waitListening(t, iso, "comm=iperf3", i+1)
		args := []string{"-c", insAddr, "-p", "5201", "-t", "3", "-P", fmt.Sprint(tc.streams), "-J"}
		if tc.reverse {
			args = append(args, "-R")
		}
		out, err := tp.WAN.Command(ctx, "iperf3", args...).Output()
		var cli iperfResult
		if jerr := json.Unmarshal(out, &cli); jerr != nil || err != nil || cli.Error != "" {
			t.Fatalf("%s: client: %v %v %s\n%s", name, err, jerr, cli.Error, out)
		}
		var sv iperfResult
		select {
		case r, ok := <-results:
			if !ok {
				t.Fatalf("%s: the server's output ended", name)
			}
			sv = r
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: no result from the server", name)
		}
		if sv.Error != "" {
			t.Fatalf("%s: server: %s", name, sv.Error)
		}
		// The server's own count, and the count it handed the client.
		srvCount, cliView, cliCount := sv.End.SumReceived, cli.End.SumReceived, cli.End.SumSent
		if tc.reverse {
			srvCount, cliView, cliCount = sv.End.SumSent, cli.End.SumSent, cli.End.SumReceived
		}
		sent, received := cliCount.Bytes, srvCount.Bytes
		if tc.reverse {
			sent, received = srvCount.Bytes, cliCount.Bytes
		}
		t.Logf("%s: server %.0f Mbit/s (%d bytes), client %.0f Mbit/s (%d bytes)",
			name, srvCount.BitsPerSecond/1e6, srvCount.Bytes, cliCount.BitsPerSecond/1e6, cliCount.Bytes)
		if srvCount.BitsPerSecond <= 0 || cliCount.BitsPerSecond <= 0 || received <= 0 {
			t.Errorf("%s: no throughput: server %+v, client %+v", name, srvCount, cliCount)
		}
		if cliView.Bytes != srvCount.Bytes {
			t.Errorf("%s: the client was told the server counted %d bytes, the server says %d", name, cliView.Bytes, srvCount.Bytes)
		}
		if received > sent || sent-received > int64(tc.streams*perStream) {
			t.Errorf("%s: sent %d bytes, received %d: want received ≤ sent and at most %d in flight", name, sent, received, tc.streams*perStream)
		}
		if n := len(sv.End.Streams); n != tc.streams {
			t.Errorf("%s: server reports %d streams, want %d", name, n, tc.streams)
		}
		for j, st := range sv.End.Streams {
			if st.Sender.Bytes <= 0 && st.Receiver.Bytes <= 0 {
				t.Errorf("%s: server stream %d carried nothing: %+v", name, j, st)
			}
		}
	}
}

// lastInt returns the last field of a sysctl value such as tcp_wmem.
func lastInt(t *testing.T, v string) int {
	t.Helper()
	f := strings.Fields(v)
	if len(f) == 0 {
		t.Fatalf("empty sysctl value")
	}
	n, err := strconv.Atoi(f[len(f)-1])
	if err != nil {
		t.Fatalf("sysctl value %q: %v", v, err)
	}
	return n
}

// waitListening waits until the daemon has logged n "app: listening" lines
// containing word.
func waitListening(t *testing.T, iso *harness.Isolator, word string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := 0
		for _, l := range strings.Split(iso.Log(), "\n") {
			if strings.Contains(l, "app: listening") && strings.Contains(l, word) {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d listeners with %q logged, want %d", got, word, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
