// Package resolve tests name resolution under the shim: programs in the app
// namespace, which has only loopback and so no way to a nameserver, resolve
// names through the INS, which asks a DNS server the test runs in wan.
// curl fetches by name over IPv4 and IPv6, fails on an unknown name as
// it should, and a C program compares every libc lookup interface under
// the shim with glibc's own resolver asking the same server from wan.
package resolve

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/internal/dnstest"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// env is one test topology with the DNS and HTTP servers in wan and an
// isolator whose INS use that DNS server.
type env struct {
	tp   *topo.Topology
	iso  *harness.Isolator
	dns  *dnstest.Server
	page []byte
	wan4 netip.Addr // 10.77.0.1
	wan6 netip.Addr // fd77::1
	ins4 netip.Addr // the INS's address on uplink 0
	ins6 netip.Addr
}

func (e *env) shimEnv(t *testing.T) []string {
	return append(os.Environ(), "LD_PRELOAD="+harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+e.iso.Socket)
}

// hostsFile is the /etc/hosts of both namespaces: fromhosts.test is also in
// DNS, with another address, which must not win.
const hostsFile = "127.0.0.1 localhost\n10.77.0.1 fromhosts.test hostsalias\n"

// etcNetns gives namespace ns its own resolv.conf and hosts: `ip netns
// exec` bind-mounts /etc/netns/NAME/* over /etc for what it runs.
func etcNetns(t *testing.T, ns *topo.NS, resolv string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for name, body := range map[string]string{"resolv.conf": resolv, "hosts": hostsFile} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func setup(t *testing.T) *env {
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	u := tp.Uplinks[0]
	e := &env{tp: tp, dns: dnstest.New(), wan4: u.WANAddr4, wan6: u.WANAddr6, ins4: u.HostAddr4(0), ins6: u.HostAddr6(0)}
	t.Cleanup(func() { e.dns.Close() })

	// The DNS server, UDP and TCP on both wan addresses.
	err := tp.WAN.Do(func() error {
		for _, a := range []netip.Addr{e.wan4, e.wan6} {
			ap := netip.AddrPortFrom(a, 53).String()
			pc, err := net.ListenPacket("udp", ap)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", ap)
			if err != nil {
				pc.Close()
				return err
			}
			e.dns.ServePacket(pc)
			e.dns.ServeStream(ln)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("DNS server in wan: %v", err)
	}
	z := e.dns
	z.Set("web.test", dnstest.Record{A: []netip.Addr{e.wan4}, AAAA: []netip.Addr{e.wan6}})
	z.Set("web4.test", dnstest.Record{A: []netip.Addr{e.wan4}})
	z.Set("web6.test", dnstest.Record{AAAA: []netip.Addr{e.wan6}})
	z.Set("alias.test", dnstest.Record{CNAME: "web.test"})
	z.Set("fromhosts.test", dnstest.Record{A: []netip.Addr{netip.MustParseAddr("10.77.0.99")}})
	z.Set("drop.test", dnstest.Record{Behavior: dnstest.Drop})
	z.Set("servfail.test", dnstest.Record{Behavior: dnstest.ServFail})
	z.Set("refused.test", dnstest.Record{Behavior: dnstest.Refused})
	var many []netip.Addr
	for i := range 40 {
		many = append(many, netip.AddrFrom4([4]byte{10, 77, 0, byte(100 + i)}))
	}
	z.Set("many.test", dnstest.Record{A: many})
	z.SetPTR(e.wan6, "web6.test")
	z.SetPTR(e.ins4, "ins.test")

	// A web server in wan that tells who asked for which host.
	e.page = make([]byte, 64<<10)
	rand.Read(e.page)
	var ln net.Listener
	if err := tp.WAN.Do(func() (err error) { ln, err = net.Listen("tcp", "[::]:8080"); return err }); err != nil {
		t.Fatalf("web server in wan: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-Peer", r.RemoteAddr)
		w.Write(e.page)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	// glibc's own resolver in wan asks the same server; in app it has no
	// route to it.
	etcNetns(t, tp.WAN, "nameserver 10.77.0.1\noptions timeout:1 attempts:1\n")
	etcNetns(t, tp.App, "nameserver 10.77.0.1\noptions timeout:1 attempts:1\n")

	e.iso = harness.StartIsolator(t, tp, harness.Options{INS: 1,
		Args: []string{"--dns", e.wan4.String(), "--dns-timeout", "500ms"}})
	return e
}

// curl runs curl in app under the shim and returns its stdout, the
// response headers, stderr and exit code.
func (e *env) curl(t *testing.T, shim bool, args ...string) (body []byte, headers, stderr string, code int) {
	t.Helper()
	hdr := filepath.Join(t.TempDir(), "headers")
	cmd := e.tp.App.Command(context.Background(), "curl", append([]string{"-sS", "-g", "--max-time", "20", "-D", hdr}, args...)...)
	if shim {
		cmd.Env = e.shimEnv(t)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("curl: %v", err)
	}
	h, _ := os.ReadFile(hdr)
	return out.Bytes(), string(h), errb.String(), code
}

func header(headers, name string) string {
	for _, l := range strings.Split(headers, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestCurl: curl under the shim fetches by name over IPv4, over IPv6
// (-6, an AAAA-only name), from a dual-stack name and through a CNAME; an
// unknown name is curl's "Could not resolve host" (exit 6). Without the
// shim the app namespace resolves nothing.
func TestCurl(t *testing.T) {
	harness.NeedFiles(t, "/usr/bin/curl")
	e := setup(t)
	for _, tc := range []struct {
		name string
		args []string
		peer string // the web server saw the request from this INS address
	}{
		{"A record", []string{"http://web4.test:8080/f"}, e.ins4.String()},
		{"AAAA record, -6", []string{"-6", "http://web6.test:8080/f"}, "[" + e.ins6.String() + "]"},
		{"dual stack, -4", []string{"-4", "http://web.test:8080/f"}, e.ins4.String()},
		{"dual stack, -6", []string{"-6", "http://web.test:8080/f"}, "[" + e.ins6.String() + "]"},
		{"CNAME", []string{"http://alias.test:8080/f"}, ""},
		{"/etc/hosts wins over DNS", []string{"http://fromhosts.test:8080/f"}, e.ins4.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, headers, stderr, code := e.curl(t, true, tc.args...)
			if code != 0 {
				t.Fatalf("curl %v: exit %d: %s", tc.args, code, stderr)
			}
			if !bytes.Equal(body, e.page) {
				t.Fatalf("curl %v: %d bytes, not the page", tc.args, len(body))
			}
			host := strings.TrimSuffix(strings.TrimPrefix(tc.args[len(tc.args)-1], "http://"), "/f")
			if got := header(headers, "X-Host"); got != host {
				t.Errorf("server saw Host %q, want %q", got, host)
			}
			if peer := header(headers, "X-Peer"); tc.peer != "" && !strings.HasPrefix(peer, tc.peer+":") {
				t.Errorf("server saw the request from %s, want %s", peer, tc.peer)
			}
		})
	}
	t.Run("unknown name", func(t *testing.T) {
		_, _, stderr, code := e.curl(t, true, "http://nx.test:8080/f")
		if code != 6 || !strings.Contains(stderr, "Could not resolve host") {
			t.Fatalf("curl of an unknown name: exit %d (%q), want 6 and Could not resolve host", code, stderr)
		}
	})
	t.Run("without the shim", func(t *testing.T) {
		_, _, stderr, code := e.curl(t, false, "http://web4.test:8080/f")
		if code != 6 {
			t.Fatalf("curl without the shim resolved web4.test from the app namespace: exit %d %s", code, stderr)
		}
	})
}

// buildLookup compiles progs/lookup.c.
func buildLookup(t *testing.T) string {
	t.Helper()
	return harness.BuildC(t, "progs/lookup.c")
}

// runLookup runs the lookup program with the given cases and returns its
// output split per case (each case's first line starts unindented).
func runLookup(t *testing.T, cmd *exec.Cmd) map[string]string {
	t.Helper()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, errb.String())
	}
	res := map[string]string{}
	var cur string
	for _, l := range strings.SplitAfter(string(out), "\n") {
		if l == "" {
			continue
		}
		if !strings.HasPrefix(l, " ") {
			cur, _, _ = strings.Cut(l, ": ")
		}
		res[cur] += l
	}
	return res
}

// TestLookupInterfaces runs getaddrinfo, gethostbyname*, getnameinfo and
// gethostbyaddr under the shim in app and with glibc's resolver in wan
// (both ask the same DNS server; wan has the same address families as the
// INS) and wants the same answers, error codes included. A few cases have
// their answer spelled out as well, so that a resolver broken on both
// sides does not pass.
func TestLookupInterfaces(t *testing.T) {
	e := setup(t)
	bin := buildLookup(t)
	cases := []string{
		// getaddrinfo: families, socket types, services, flags.
		"ai web4.test http inet stream -",
		"ai web4.test 80 unspec 0 -",
		"ai web.test http unspec stream -",
		"ai web.test 8080 unspec dgram addrconfig",
		"ai web.test - inet6 stream -",
		"ai web4.test - inet6 stream v4mapped",
		"ai web.test - inet6 stream v4mapped,all",
		"ai web6.test - inet stream -",
		"ai web6.test - unspec 0 -",
		"ai alias.test 443 unspec stream canon",
		"ai web4.test. 80 inet stream canon",
		"ai WEB4.TEST 80 inet stream canon",
		"ai many.test 80 inet stream -",
		"ai nx.test 80 unspec stream -",
		"ai web4.test http unspec stream numericserv",
		"ai web4.test nosuchservice unspec stream -",
		"ai web4.test 80 unspec raw -",
		"ai web4.test 80 unspec stream numerichost",
		"ai 10.77.0.1 80 unspec stream numerichost",
		"ai fd77::1 http unspec stream -",
		"ai drop.test 80 inet stream -",
		"ai servfail.test 80 inet stream -",
		"ai refused.test 80 inet stream -",
		"ai fromhosts.test 80 inet stream canon",
		"ai hostsalias 80 unspec stream canon",
		"ai a..b 80 unspec stream -",
		"ai web4.test 80 inet stream passive",
		"ai - 80 unspec stream passive",
		"ai web4.test 80 inet stream 0x10000", // an undefined flag: EAI_BADFLAGS
		// gethostbyname family.
		"hb web4.test",
		"hb alias.test",
		"hb web6.test",
		"hb nx.test",
		"hb drop.test",
		"hb 10.77.0.1",
		"hb fromhosts.test",
		"hb2 web6.test inet6",
		"hb2 web.test inet6",
		"hb2 web4.test inet6",
		"hbr web.test inet 1024",
		"hbr web.test inet 16",
		"hbr nx.test inet 1024",
		// Reverse lookups.
		"ni fd77::1 80 - 1025",
		"ni fd77::1 80 namereqd,nofqdn 1025",
		"ni fd77::1 80 - 4",
		"ni 10.77.0.1 22 - 1025",
		"ni 10.77.0.2 80 - 1025",
		"ni 10.77.0.2 80 namereqd 1025",
		"ni 10.77.0.2 80 numericserv,numerichost 1025",
		"ha fd77::1",
		"ha 10.77.0.2",
		"ha 10.77.0.1",
		"ni 10.77.0.10 443 - 1025", // the INS's own address: PTR ins.test
		"ha 10.77.0.10",
	}
	shimCmd := e.tp.App.Command(context.Background(), bin, cases...)
	shimCmd.Env = e.shimEnv(t)
	shim := runLookup(t, shimCmd)
	glibc := runLookup(t, e.tp.WAN.Command(context.Background(), bin, cases...))
	for _, c := range cases {
		if shim[c] == "" {
			t.Errorf("%s: no output under the shim", c)
			continue
		}
		if shim[c] != glibc[c] {
			t.Errorf("%s:\nunder the shim:\n%sglibc in wan:\n%s", c, shim[c], glibc[c])
		}
	}
	// Spelled out.
	for c, want := range map[string]string{
		"ai web6.test - unspec 0 -":              "ai web6.test - unspec 0 -: OK\n  inet6 stream proto 6 flags 0 fd77::1 port 0 scope 0\n  inet6 dgram proto 17 flags 0 fd77::1 port 0 scope 0\n  inet6 raw proto 0 flags 0 fd77::1 port 0 scope 0\n",
		"ai alias.test 443 unspec stream canon":  "ai alias.test 443 unspec stream canon: OK\n  inet6 stream proto 6 flags 0x2 fd77::1 port 443 scope 0 canon web.test\n  inet stream proto 6 flags 0x2 10.77.0.1 port 443\n",
		"ai web4.test - inet6 stream v4mapped":   "ai web4.test - inet6 stream v4mapped: OK\n  inet6 stream proto 6 flags 0x8 ::ffff:10.77.0.1 port 0 scope 0\n",
		"ai nx.test 80 unspec stream -":          "ai nx.test 80 unspec stream -: EAI_NONAME\n",
		"ai drop.test 80 inet stream -":          "ai drop.test 80 inet stream -: EAI_AGAIN\n",
		"ai fromhosts.test 80 inet stream canon": "ai fromhosts.test 80 inet stream canon: OK\n  inet stream proto 6 flags 0x2 10.77.0.1 port 80 canon fromhosts.test\n",
		"hb alias.test":                          "hb alias.test: name web.test type inet len 4 aliases [alias.test] addrs [10.77.0.1]\n",
		"hbr web.test inet 16":                   "hbr web.test inet 16: rc ERANGE h_errno NETDB_INTERNAL NULL\n",
		"ni fd77::1 80 namereqd,nofqdn 1025":     "ni fd77::1 80 namereqd,nofqdn 1025: OK host web6.test serv http\n",
		"ni 10.77.0.10 443 - 1025":               "ni 10.77.0.10 443 - 1025: OK host ins.test serv https\n",
		"ni 10.77.0.2 80 namereqd 1025":          "ni 10.77.0.2 80 namereqd 1025: EAI_NONAME\n",
	} {
		if shim[c] != want {
			t.Errorf("%s under the shim:\n%swant:\n%s", c, shim[c], want)
		}
	}
	// Only under the shim: localhost is loopback in every family (RFC
	// 6761) without a DNS query, although /etc/hosts has no ::1.
	lcmd := e.tp.App.Command(context.Background(), bin, "ai localhost 80 inet6 stream -", "hb2 localhost inet6", "ai x.localhost 80 unspec stream -")
	lcmd.Env = e.shimEnv(t)
	loc := runLookup(t, lcmd)
	for c, want := range map[string]string{
		"ai localhost 80 inet6 stream -":    "ai localhost 80 inet6 stream -: OK\n  inet6 stream proto 6 flags 0 ::1 port 80 scope 0\n",
		"hb2 localhost inet6":               "hb2 localhost inet6: name localhost type inet6 len 16 aliases [] addrs [::1]\n",
		"ai x.localhost 80 unspec stream -": "ai x.localhost 80 unspec stream -: OK\n  inet6 stream proto 6 flags 0 ::1 port 80 scope 0\n  inet stream proto 6 flags 0 127.0.0.1 port 80\n",
	} {
		if loc[c] != want {
			t.Errorf("%s under the shim:\n%swant:\n%s", c, loc[c], want)
		}
	}
	for _, n := range []string{"localhost", "x.localhost"} {
		if q := e.dns.Queries(n, 28) + e.dns.Queries(n, 1); q != 0 {
			t.Errorf("%s reached the DNS server %d times", n, q)
		}
	}
}

// TestIsolatorUnreachable: with no isolator, lookups that need DNS fail
// closed with EAI_SYSTEM and ENETUNREACH, while numeric and /etc/hosts
// names still resolve; MPSHIM_FAIL=open hands them to glibc.
func TestIsolatorUnreachable(t *testing.T) {
	e := setup(t)
	bin := buildLookup(t)
	run := func(extra ...string) map[string]string {
		cmd := e.tp.App.Command(context.Background(), bin, "ai web4.test 80 inet stream -", "ai 10.77.0.1 80 inet stream -", "ai fromhosts.test 80 inet stream -", "hb web4.test")
		cmd.Env = append(os.Environ(), append([]string{"LD_PRELOAD=" + harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET=" + filepath.Join(t.TempDir(), "none.sock")}, extra...)...)
		return runLookup(t, cmd)
	}
	closed := run()
	for c, want := range map[string]string{
		"ai web4.test 80 inet stream -":      "ai web4.test 80 inet stream -: EAI_SYSTEM ENETUNREACH\n",
		"ai 10.77.0.1 80 inet stream -":      "ai 10.77.0.1 80 inet stream -: OK\n  inet stream proto 6 flags 0 10.77.0.1 port 80\n",
		"ai fromhosts.test 80 inet stream -": "ai fromhosts.test 80 inet stream -: OK\n  inet stream proto 6 flags 0 10.77.0.1 port 80\n",
		"hb web4.test":                       "hb web4.test: NULL NETDB_INTERNAL\n",
	} {
		if closed[c] != want {
			t.Errorf("fail closed, %s:\n%swant:\n%s", c, closed[c], want)
		}
	}
	// Fail open: glibc's resolver, which has no route from app.
	open := run("MPSHIM_FAIL=open")
	if got := open["ai web4.test 80 inet stream -"]; !strings.HasPrefix(got, "ai web4.test 80 inet stream -: EAI_AGAIN") {
		t.Errorf("fail open: %q, want glibc's EAI_AGAIN", got)
	}
}
