// Package netflow checks flow monitoring end to end: Debian's nginx under
// libmpshim.so in an app namespace, served by the isolator's INS, loaded by
// wrk and curl from the wan namespace; `netflow watch -o json` must report
// what nginx logged, nfcapd/nfdump must receive the IPFIX export with the
// same counts, and /metrics and the remote API must answer.
package netflow

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// server is one nginx under the shim, logging per request the client's
// address and port, $bytes_sent and $request_length.
type server struct {
	*harness.Nginx
}

func startNginx(t *testing.T, tp *topo.Topology, iso *harness.Isolator, files map[string]int) *server {
	t.Helper()
	n := harness.StartNginx(t, harness.NginxOptions{NS: tp.App, Shim: iso, Files: harness.RandomFiles(files),
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 2;
events { worker_connections 4096; }
http {
    log_format flows '$remote_addr $remote_port $bytes_sent $request_length $status';
    access_log %[1]s/access.log flows;
    sendfile on;
    keepalive_timeout 60;
    keepalive_requests 1000000;
    server {
        listen 80;
        listen [::]:80;
        root %[2]s;
    }
}
`, dir, root)
		}})
	return &server{Nginx: n}
}

// logEntry is one access log line.
type logEntry struct {
	client               string // addr:port as the flow names it
	bytesSent, reqLength uint64
}

func (s *server) accessLog(t *testing.T) []logEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []logEntry
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 5 {
			t.Fatalf("access log line %q", l)
		}
		bs, _ := strconv.ParseUint(f[2], 10, 64)
		rl, _ := strconv.ParseUint(f[3], 10, 64)
		addr := f[0]
		if strings.Contains(addr, ":") {
			addr = "[" + addr + "]"
		}
		out = append(out, logEntry{client: addr + ":" + f[1], bytesSent: bs, reqLength: rl})
	}
	return out
}

// watcher runs `netflow watch -o json` and collects its stream.
type watcher struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

func startWatch(t *testing.T, iso *harness.Isolator, args ...string) *watcher {
	t.Helper()
	w := &watcher{}
	w.cmd = exec.Command(harness.Binary(t, "netflow"), append([]string{"--api", iso.API, "watch", "-o", "json"}, args...)...)
	w.cmd.Stdout = &w.out
	var stderr bytes.Buffer
	w.cmd.Stderr = &stderr
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if w.cmd.ProcessState == nil {
			syscall.Kill(w.cmd.Process.Pid, syscall.SIGKILL)
			w.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("netflow watch stderr:\n%s", stderr.String())
		}
	})
	return w
}

// stop interrupts the watcher and returns the last update of every flow.
func (w *watcher) stop(t *testing.T) map[string]netflow.Flow {
	t.Helper()
	w.cmd.Process.Signal(syscall.SIGINT)
	if err := w.cmd.Wait(); err != nil {
		t.Fatalf("netflow watch: %v", err)
	}
	last := map[string]netflow.Flow{}
	lines := 0
	err := netflow.DecodeFlows(bytes.NewReader(w.out.Bytes()), func(f netflow.Flow) error {
		lines++
		last[f.ID+"/"+f.First.String()] = f
		return nil
	})
	if err != nil {
		t.Fatalf("netflow watch -o json output: %v", err)
	}
	t.Logf("netflow watch: %d updates of %d flows", lines, len(last))
	return last
}

func endpoint(a fmt.Stringer, port uint16) string {
	s := a.String()
	if strings.Contains(s, ":") {
		s = "[" + s + "]"
	}
	return s + ":" + strconv.Itoa(int(port))
}

func within(got, want uint64, frac float64) bool {
	return math.Abs(float64(got)-float64(want)) <= frac*float64(want)
}

// near is within, or at most slack apart.
func near(got, want uint64, frac float64, slack uint64) bool {
	return within(got, want, frac) || math.Abs(float64(got)-float64(want)) <= float64(slack)
}

// waitEnded polls `netflow ls -o json` until no flow matching filter is
// live, so every flow's final counts have been collected.
func waitEnded(t *testing.T, iso *harness.Isolator, filter ...string) []netflow.Flow {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(harness.Binary(t, "netflow"), append([]string{"--api", iso.API, "ls", "-o", "json"}, filter...)...).Output()
		if err != nil {
			t.Fatalf("netflow ls: %v", err)
		}
		var flows []netflow.Flow
		live := 0
		if err := netflow.DecodeFlows(bytes.NewReader(out), func(f netflow.Flow) error {
			flows = append(flows, f)
			if f.End == netflow.EndNone {
				live++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if live == 0 && len(flows) > 0 {
			return flows
		}
		if time.Now().After(deadline) {
			t.Fatalf("flows still live after 30 s: %d of %d", live, len(flows))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestWatchMatchesNginxLog drives nginx with wrk over two INS and both
// address families, and compares what `netflow watch -o json` reported
// with nginx's access log.
//
// What is compared: nginx's $bytes_sent is what it wrote to the connection
// (HTTP headers and body), the flow's rev.payload is the TCP payload the INS
// sent to the client; $request_length against fwd.payload likewise. Both
// count retransmitted segments once more, hence a tolerance of 2 %; IP bytes
// (rev.bytes) add 52 bytes of IP and TCP headers per packet and are checked
// for that.
func TestWatchMatchesNginxLog(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/wrk", "/usr/bin/curl")
	tp := topo.New(t, topo.Config{Uplinks: 2})
	dir := t.TempDir()
	token := filepath.Join(dir, "api.token")
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: []string{
		"--allow-uid", "0", "--allow-uid", "33",
		"--metrics-listen", "127.0.0.1:9108",
		"--api-listen", "127.0.0.1:7443", "--api-token-file", token,
	}})
	infos, err := iso.List()
	if err != nil {
		t.Fatal(err)
	}
	s := startNginx(t, tp, iso, map[string]int{"64k.bin": 64 << 10, "1k.bin": 1 << 10})
	w := startWatch(t, iso, "--port", "80")

	// wrk against INS 1 on uplink 0 (IPv4) and INS 2 on uplink 1 (IPv6).
	targets := []string{
		"http://" + strings.Split(infos[0].Uplinks[0].Addr4, "/")[0] + "/64k.bin",
		"http://[" + strings.Split(infos[1].Uplinks[1].Addr6, "/")[0] + "]/1k.bin",
	}
	for _, u := range targets {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := tp.WAN.Command(ctx, "wrk", "-t2", "-c16", "-d3s", u).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("wrk %s: %v\n%s", u, err, out)
		}
		if m := regexp.MustCompile(`Requests/sec:\s+([\d.]+)`).FindSubmatch(out); m != nil {
			t.Logf("wrk %s: %s req/s", u, m[1])
		}
	}
	waitEnded(t, iso, "--port", "80")
	time.Sleep(1500 * time.Millisecond) // one more refresh of the watcher
	flows := w.stop(t)

	// Per connection: the flow of the client's address and port.
	byClient := map[string]netflow.Flow{}
	for _, f := range flows {
		if f.DstPort != 80 || f.Dir != netflow.In {
			continue
		}
		if f.End != netflow.EndOfFlow {
			t.Errorf("flow %s %v: end %q, want end (FIN)", f.ID, f.Key(), f.End)
		}
		byClient[endpoint(f.Src, f.SrcPort)] = f
	}
	logged := map[string][2]uint64{}
	var sent, reqs, maxSent, maxReq uint64
	for _, e := range s.accessLog(t) {
		v := logged[e.client]
		logged[e.client] = [2]uint64{v[0] + e.bytesSent, v[1] + e.reqLength}
		sent += e.bytesSent
		reqs += e.reqLength
		maxSent, maxReq = max(maxSent, e.bytesSent), max(maxReq, e.reqLength)
	}
	if len(logged) < 32 {
		t.Fatalf("access log names %d connections, want 32", len(logged))
	}
	var payload, reqPayload uint64
	pids := map[int]int{}
	ins := map[int]bool{}
	for client, v := range logged {
		f, ok := byClient[client]
		if !ok {
			t.Errorf("connection %s in the access log has no flow", client)
			continue
		}
		payload += f.Rev.Payload
		reqPayload += f.Fwd.Payload
		pids[f.PID]++
		ins[f.INS] = true
		// One connection may differ by the request wrk had in flight
		// when it stopped, which nginx never logs; the totals below
		// hold the 2%.
		if !near(f.Rev.Payload, v[0], 0.02, maxSent) || !near(f.Fwd.Payload, v[1], 0.02, maxReq) {
			t.Errorf("connection %s: flow payload %d/%d bytes, nginx logged %d sent, %d received", client, f.Rev.Payload, f.Fwd.Payload, v[0], v[1])
		}
		if hdr := f.Rev.Bytes - f.Rev.Payload; hdr < 40*f.Rev.Packets || hdr > 80*f.Rev.Packets {
			t.Errorf("connection %s: %d IP bytes for %d payload bytes in %d packets", client, f.Rev.Bytes, f.Rev.Payload, f.Rev.Packets)
		}
	}
	t.Logf("nginx logged %d bytes sent, %d received over %d connections; flows carried %d and %d payload bytes", sent, reqs, len(logged), payload, reqPayload)
	if !within(payload, sent, 0.02) || !within(reqPayload, reqs, 0.02) {
		t.Errorf("flow payload %d/%d, nginx logged %d/%d: more than 2%% apart", payload, reqPayload, sent, reqs)
	}
	if len(ins) != 2 {
		t.Errorf("flows seen on INS %v, want both", ins)
	}
	if master := s.MasterPID(); len(pids) != 1 || pids[master] == 0 {
		t.Errorf("flow pids %v, want nginx's master %d for all", pids, master)
	}

	t.Run("ls", func(t *testing.T) {
		out, err := exec.Command(harness.Binary(t, "netflow"), "--api", iso.API, "ls", "--aggregate-by", "ins", "--sort", "bytes").CombinedOutput()
		if err != nil || !regexp.MustCompile(`(?m)^1\s+\d+`).Match(out) || !regexp.MustCompile(`(?m)^2\s+\d+`).Match(out) {
			t.Fatalf("netflow ls --aggregate-by ins: %v\n%s", err, out)
		}
	})

	t.Run("replay", func(t *testing.T) {
		// The recorded stream replays into a table.
		cmd := exec.Command(harness.Binary(t, "netflow"), "watch", "--input-file", "-", "--aggregate-by", "port", "--sort", "bytes")
		cmd.Stdin = bytes.NewReader(w.out.Bytes())
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "tcp/80") {
			t.Fatalf("replay: %v\n%s", err, out)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		out, err := tp.GW.Command(context.Background(), "curl", "-sS", "--fail", "--max-time", "10", "http://127.0.0.1:9108/metrics").Output()
		if err != nil {
			t.Fatalf("curl /metrics: %v", err)
		}
		metric := func(name string, labels ...string) float64 {
			for _, l := range strings.Split(string(out), "\n") {
				if !strings.HasPrefix(l, name+"{") {
					continue
				}
				ok := true
				for _, lb := range labels {
					ok = ok && strings.Contains(l, lb)
				}
				if ok {
					v, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
					return v
				}
			}
			t.Errorf("/metrics has no %s%v", name, labels)
			return 0
		}
		// INS 1 sent at least the payload of its flows on uplink 0.
		var ins1 uint64
		for _, f := range flows {
			// The NIC counts a GSO segment's headers once, flows
			// count them per frame on the wire: payload is what both
			// count alike.
			if f.INS == 1 && f.Uplink == "up0" {
				ins1 += f.Rev.Payload
			}
		}
		if tx := metric("mpshim_uplink_bytes_total", `ins="1"`, `uplink="up0"`, `direction="tx"`); tx < float64(ins1) {
			t.Errorf("INS 1 up0 tx bytes %v < %d payload bytes of its flows", tx, ins1)
		}
		if v := metric("mpshim_ins_up", `ins="2"`); v != 1 {
			t.Errorf("mpshim_ins_up{ins=2} = %v", v)
		}
		if v := metric("mpshim_flows_created_total", `ins="1"`) + metric("mpshim_flows_created_total", `ins="2"`); v < float64(len(byClient)) {
			t.Errorf("%v flows created, %d seen", v, len(byClient))
		}
	})

	t.Run("remote", func(t *testing.T) {
		cert, err := api.LoadOrCreateCert(token + ".pem")
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"--api", "tls://127.0.0.1:7443", "--api-token-file", token, "--api-pin", api.Fingerprint(cert), "ls", "-o", "json", "--port", "80"}
		out, err := tp.GW.Command(context.Background(), harness.Binary(t, "netflow"), args...).Output()
		if err != nil {
			t.Fatalf("remote netflow ls: %v", err)
		}
		n := 0
		if err := netflow.DecodeFlows(bytes.NewReader(out), func(netflow.Flow) error { n++; return nil }); err != nil || n == 0 {
			t.Fatalf("remote ls: %d flows, %v", n, err)
		}
		bad := filepath.Join(t.TempDir(), "bad.token")
		os.WriteFile(bad, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
		args[4] = bad
		if out, err := tp.GW.Command(context.Background(), harness.Binary(t, "netflow"), args...).CombinedOutput(); err == nil || !strings.Contains(string(out), "token") {
			t.Fatalf("wrong token: %v\n%s", err, out)
		}
	})
}

// nfdumpFlow is one flow as `nfdump -o json` prints it.
type nfdumpFlow struct {
	Src4       string `json:"src4_addr"`
	Dst4       string `json:"dst4_addr"`
	Src6       string `json:"src6_addr"`
	SrcPort    uint16 `json:"src_port"`
	DstPort    uint16 `json:"dst_port"`
	Proto      uint8  `json:"proto"`
	InPackets  uint64 `json:"in_packets"`
	InBytes    uint64 `json:"in_bytes"`
	OutPackets uint64 `json:"out_packets"`
	OutBytes   uint64 `json:"out_bytes"`
	Input      uint32 `json:"input_snmp"`
	Flags      string `json:"tcp_flags"`
}

// TestIPFIXToNfcapd exports the flows of curl downloads to two of Debian's
// nfcapd, one receiving IPFIX and one NetFlow v9, and checks that nfdump
// prints them with the counts the flow view has and the sizes curl
// received.
func TestIPFIXToNfcapd(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl", "/usr/bin/nfcapd", "/usr/bin/nfdump")
	tp := topo.New(t, topo.Config{Uplinks: 1})
	type collector struct {
		format, port, dir string
		proc              *topo.Proc
	}
	collectors := []*collector{{format: "ipfix", port: "4739"}, {format: "netflow9", port: "9995"}}
	for _, c := range collectors {
		c.dir = t.TempDir()
		p, err := tp.GW.Start(context.Background(), "nfcapd", "-w", c.dir, "-b", "127.0.0.1", "-p", c.port, "-t", "3600")
		if err != nil {
			t.Fatal(err)
		}
		c.proc = p
		t.Cleanup(func() { p.Stop() })
	}
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1, Args: []string{
		"--allow-uid", "0", "--allow-uid", "33", "--ipfix", "127.0.0.1:4739", "--netflow9", "127.0.0.1:9995",
		"--flow-idle-timeout", "5s",
	}})
	infos, err := iso.List()
	if err != nil {
		t.Fatal(err)
	}
	startNginx(t, tp, iso, map[string]int{"1m.bin": 1 << 20, "300k.bin": 300_000})
	addr := strings.Split(infos[0].Uplinks[0].Addr4, "/")[0]

	type fetch struct {
		port            uint16
		header, content uint64
	}
	var fetches []fetch
	for _, file := range []string{"1m.bin", "300k.bin", "1m.bin"} {
		out, err := tp.WAN.Command(context.Background(), "curl", "-sS", "--fail", "--max-time", "20", "-o", "/dev/null",
			"-w", "%{local_port} %{size_header} %{size_download}", "http://"+addr+"/"+file).Output()
		if err != nil {
			t.Fatalf("curl %s: %v", file, err)
		}
		var f fetch
		if _, err := fmt.Sscan(string(out), &f.port, &f.header, &f.content); err != nil {
			t.Fatalf("curl -w output %q: %v", out, err)
		}
		fetches = append(fetches, f)
	}
	ours := map[uint16]netflow.Flow{}
	for _, f := range waitEnded(t, iso, "--port", "80") {
		ours[f.SrcPort] = f
	}
	// The ended flows are exported at the poll that saw them end; give the
	// datagrams a moment, then stop nfcapd so that it writes its file.
	time.Sleep(2 * time.Second)
	for _, c := range collectors {
		t.Run(c.format, func(t *testing.T) {
			if err := c.proc.Stop(); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("nfdump", "-R", c.dir, "-o", "json", "-N", "proto tcp and port 80").Output()
			if err != nil {
				t.Fatalf("nfdump: %v\nnfcapd:\n%s", err, c.proc.Output())
			}
			var dumped []nfdumpFlow
			if err := json.Unmarshal(out, &dumped); err != nil {
				t.Fatalf("nfdump -o json: %v\n%s", err, out)
			}
			t.Logf("nfdump printed %d flows", len(dumped))
			byPort := map[uint16][]nfdumpFlow{}
			for _, d := range dumped {
				byPort[d.SrcPort] = append(byPort[d.SrcPort], d)
			}
			for _, f := range fetches {
				d := byPort[f.port]
				if len(d) != 1 {
					t.Errorf("curl from port %d: nfdump has %d flows %+v, want 1", f.port, len(d), d)
					continue
				}
				o, ok := ours[f.port]
				if !ok {
					t.Errorf("curl from port %d: no flow in netflow ls", f.port)
					continue
				}
				t.Logf("curl from port %d received %d+%d bytes; nfdump: in %d B/%d pkts, out %d B/%d pkts", f.port, f.header, f.content,
					d[0].InBytes, d[0].InPackets, d[0].OutBytes, d[0].OutPackets)
				// nfdump prints what the flow view counted, exactly.
				if d[0].InBytes != o.Fwd.Bytes || d[0].InPackets != o.Fwd.Packets || d[0].OutBytes != o.Rev.Bytes || d[0].OutPackets != o.Rev.Packets {
					t.Errorf("port %d: nfdump in %d B/%d pkts, out %d B/%d pkts; flow view %d/%d, %d/%d", f.port,
						d[0].InBytes, d[0].InPackets, d[0].OutBytes, d[0].OutPackets, o.Fwd.Bytes, o.Fwd.Packets, o.Rev.Bytes, o.Rev.Packets)
				}
				if d[0].Src4 != tp.Uplinks[0].WANAddr4.String() || d[0].Dst4 != addr || d[0].Input != 1 || !strings.Contains(d[0].Flags, "S") || !strings.Contains(d[0].Flags, "F") {
					t.Errorf("port %d: nfdump flow %+v", f.port, d[0])
				}
				// And what curl received: header and body, plus 40-80 bytes
				// of IP and TCP headers per packet.
				got := f.header + f.content
				if d[0].OutBytes < got+40*d[0].OutPackets || d[0].OutBytes > got+80*d[0].OutPackets || !within(o.Rev.Payload, got, 0.02) {
					t.Errorf("port %d: curl received %d bytes; nfdump out bytes %d in %d packets, flow payload %d", f.port, got, d[0].OutBytes, d[0].OutPackets, o.Rev.Payload)
				}
			}
			if t.Failed() {
				t.Logf("nfcapd:\n%s", c.proc.Output())
			}
		})
	}
}
