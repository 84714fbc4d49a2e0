package msgproto

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden and the FuzzDecode seed corpus")

func ap(s string) Addr { return AddrFromNetip(netip.MustParseAddrPort(s)) }

func comm(s string) (c [16]byte) {
	copy(c[:], s)
	return c
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func seq(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i*7)
	}
	return b
}

type golden struct {
	name  string
	reqID uint64
	flags uint32
	msg   Message
}

// goldenCases is the source of testdata/golden; each file holds the
// encoding of one case and must decode back to exactly these values.
func goldenCases() []golden {
	v6ll := ap("[fe80::1%3]:443")
	v6ll.Flowinfo = 0x12345
	return []golden{
		{"register", 1, 0, &Register{PID: 4242, ProtoVersion: Version, Flags: 0x8001, StartTime: 123456789012, Comm: comm("nginx: worker")}},
		{"register_forked", 2, 0, &Register{PID: 4243, ProtoVersion: Version, Flags: RegForked, StartTime: 123456789999, Comm: comm("nginx"), Parent: 0x1122334455667788, Key: 0x0badc0ffee15900d}},
		{"fd_pass", 6, FlagFD, &FDPass{Count: 1}},
		{"register_reply", 1, FlagFD, &RegisterReply{ClientID: 0x1122334455667788, RingSize: 1 << 20, Flags: 3, Key: 0x0badc0ffee15900d}},
		{"socket", 2, 0, &Socket{Domain: 10, SockType: 1 | 0x800 | 0x80000, Protocol: 6}},
		{"socket_reply", 2, FlagFD, &SocketReply{Sock: 77}},
		{"bind_v4", 3, 0, &Bind{Sock: 77, Addr: ap("0.0.0.0:8080")}},
		{"bind_v6", 4, 0, &Bind{Sock: 78, Addr: v6ll}},
		{"listen", 5, 0, &Listen{Sock: 77, Backlog: 511}},
		{"connect_v4", 6, 0, &Connect{Sock: 79, Addr: ap("10.1.2.3:80"), Flags: ConnectNonblock, Filler: 4608}},
		{"connect_v6", 7, 0, &Connect{Sock: 80, Addr: ap("[2001:db8::42]:8443")}},
		{"shutdown", 8, 0, &Shutdown{Sock: 79, How: 1}},
		{"close", 9, 0, &Close{Sock: 79}},
		{"setsockopt_nodelay", 10, 0, &Setsockopt{Sock: 77, Level: 6, Name: 1, Value: le32(1)}},
		{"setsockopt_linger", 11, 0, &Setsockopt{Sock: 77, Level: 1, Name: 13, Value: append(le32(1), le32(5)...)}},
		{"getsockopt", 12, 0, &Getsockopt{Sock: 77, Level: 1, Name: 4, MaxLen: 4}},
		{"opt_reply", 12, 0, &OptReply{Value: le32(111)}},
		{"opt_reply_empty", 13, 0, &OptReply{}},
		{"getsockname", 14, 0, &Getsockname{Sock: 80}},
		{"getpeername", 15, 0, &Getpeername{Sock: 80}},
		{"addr_reply_v4", 14, 0, &AddrReply{Addr: ap("192.0.2.10:40000")}},
		{"addr_reply_v6", 15, 0, &AddrReply{Addr: ap("[2001:db8::42]:8443")}},
		{"ioctl", 16, 0, &Ioctl{Sock: 81, Request: 0x541B, Arg: []byte{1, 2, 3, 4}}},
		{"ioctl_reply", 16, 0, &IoctlReply{Result: 0, Arg: le32(1500)}},
		{"sendto_v4", 17, 0, &SendTo{Sock: 82, Flags: 0x40, Addr: ap("192.0.2.7:53"), Payload: append([]byte{0x12, 0x34, 1, 0, 0, 1}, seq(40, 3)...)}},
		{"sendto_connected", 18, 0, &SendTo{Sock: 82, Payload: []byte("hello")}},
		{"recvfrom", 19, 0, &RecvFrom{Sock: 82, Flags: 0x2, MaxLen: 2048}},
		{"recv_reply_trunc", 19, 0, &RecvReply{Addr: ap("[2001:db8::1]:5353"), Flags: 0x20, FullLen: 1200, Payload: seq(16, 9)}},
		{"sendmsg", 20, 0, &SendMsg{Sock: 83, Flags: 0x4000, Addr: ap("198.51.100.9:4789"), Control: seq(28, 1), Payload: seq(64, 5)}},
		{"recvmsg", 21, 0, &RecvMsg{Sock: 83, Flags: 0x40, MaxLen: 1500, MaxControl: 64}},
		{"recvmsg_reply", 21, 0, &RecvMsgReply{Addr: ap("[2001:db8::7]:9"), Flags: 0x8, FullLen: 3, Control: seq(32, 2), Payload: []byte("abc")}},
		{"reply_ok", 17, 0, &Reply{Errno: 0, Value: 46}},
		{"reply_errno", 6, 0, &Reply{Errno: 111, Value: -1}},
		{"register_refused", 0, 0, &RegisterRefused{UID: 65534, GID: 65534, PID: 4242, Errno: 13}},
		{"accept_notify_v4", 0, FlagFD, &AcceptNotify{Listener: 77, Sock: 90, Local: ap("10.0.0.1:8080"), Peer: ap("10.0.0.99:51234")}},
		{"accept_notify_v6", 0, FlagFD, &AcceptNotify{Listener: 78, Sock: 91, Local: v6ll, Peer: ap("[fe80::99%3]:60000")}},
		{"resolve", 22, 0, &Resolve{Family: FamilyUnspec, Name: []byte("www.example.com")}},
		{"resolve_reverse", 23, 0, &Resolve{Family: FamilyInet6, Flags: ResolveReverse, Addr: ap("[2001:db8::42]:0")}},
		{"resolve_reply", 22, 0, &ResolveReply{Status: ResolveOK, Families: ResolveHas4 | ResolveHas6, TTL: 300, Canon: []byte("web.example.com"),
			Addrs: AppendAddrList(nil, []netip.Addr{netip.MustParseAddr("2001:db8::80"), netip.MustParseAddr("192.0.2.80")})}},
		{"resolve_reply_noname", 24, 0, &ResolveReply{Status: ResolveNoName, Families: ResolveHas4, TTL: 60}},
		{"datagram_v4", 0, 0, &Datagram{Addr: ap("192.0.2.7:53"), Len: 512}},
		{"datagram_connected", 0, 0, &Datagram{Flags: 0x800, Len: 65535}},
	}
}

const goldenDir = "testdata/golden"

func TestGolden(t *testing.T) {
	cases := goldenCases()
	if *update {
		writeGolden(t, cases)
	}
	seen := map[Type]bool{}
	names := map[string]bool{}
	for _, c := range cases {
		names[c.name+".bin"] = true
		t.Run(c.name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(goldenDir, c.name+".bin"))
			if err != nil {
				t.Fatalf("read golden (run go test ./msgproto -run TestGolden -update): %v", err)
			}
			h, m, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			seen[h.Type] = true
			want := Header{Magic: Magic, Version: Version, Type: c.msg.Type(), Length: uint32(len(b)), Flags: c.flags, ReqID: c.reqID}
			if h != want {
				t.Errorf("header = %+v, want %+v", h, want)
			}
			if !msgEqual(m, c.msg) {
				t.Errorf("decoded %#v, want %#v", m, c.msg)
			}
			enc, err := Append(nil, h.ReqID, h.Flags, m)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if !bytes.Equal(enc, b) {
				t.Errorf("re-encoding differs:\n got %x\nwant %x", enc, b)
			}
		})
	}
	for _, typ := range allTypes {
		if !seen[typ] {
			t.Errorf("no golden vector for %v", typ)
		}
	}
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.bin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !names[filepath.Base(f)] {
			t.Errorf("stray golden file %s (not in goldenCases)", f)
		}
	}
}

func writeGolden(t *testing.T, cases []golden) {
	t.Helper()
	corpus := filepath.Join("testdata", "fuzz", "FuzzDecode")
	for _, dir := range []string{goldenDir, corpus} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range cases {
		b, err := Append(nil, c.reqID, c.flags, c.msg)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if err := os.WriteFile(filepath.Join(goldenDir, c.name+".bin"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(corpus, "golden_"+c.name), []byte(seed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// msgEqual compares messages treating nil and empty byte slices as equal.
func msgEqual(a, b Message) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return dumpMessage(Header{}, a) == dumpMessage(Header{}, b) && reflect.TypeOf(a) == reflect.TypeOf(b)
}

// dumpMessage is the canonical text form the C test program also prints.
// It walks the Go struct by reflection, independently of the generator.
func dumpMessage(h Header, m Message) string {
	var b strings.Builder
	fmt.Fprintf(&b, "type %v\nreqid %d\nflags %d\n", m.Type(), h.ReqID, h.Flags)
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		name, f := v.Type().Field(i).Name, v.Field(i)
		switch x := f.Interface().(type) {
		case Addr:
			fmt.Fprintf(&b, "%s.Family %d\n%s.Port %d\n%s.Flowinfo %d\n%s.ScopeID %d\n%s.IP %x\n",
				name, x.Family, name, x.Port, name, x.Flowinfo, name, x.ScopeID, name, x.IP)
		case []byte:
			fmt.Fprintf(&b, "%s %x\n", name, x)
		case [16]byte:
			fmt.Fprintf(&b, "%s %x\n", name, x)
		default:
			fmt.Fprintf(&b, "%s %v\n", name, x)
		}
	}
	return b.String()
}

var sentinels = []error{ErrTruncated, ErrOversized, ErrUnknownType, ErrBadVersion, ErrBadMagic, ErrBadLength, ErrBadField}

// errKind names the single sentinel err wraps (its text matches the C
// mp_strerror), or fails the test.
func errKind(t testing.TB, err error) string {
	t.Helper()
	var found []string
	for _, s := range sentinels {
		if errors.Is(err, s) {
			found = append(found, s.Error())
		}
	}
	if len(found) != 1 {
		t.Fatalf("error %q wraps sentinels %v, want exactly one", err, found)
	}
	return found[0]
}

// expectC is what the C program must print for input b.
func expectC(t testing.TB, b []byte) string {
	h, m, err := Decode(b)
	if err != nil {
		return "err " + errKind(t, err) + "\n.\n"
	}
	enc, err := Append(nil, h.ReqID, h.Flags, m)
	if err != nil {
		t.Fatalf("re-encode %x: %v", b, err)
	}
	return dumpMessage(h, m) + "enc " + hex.EncodeToString(enc) + "\n.\n"
}

// corruptions returns damaged variants of a valid message b: truncations,
// header damage, schema-directed field damage and random byte mutations.
func corruptions(b []byte, rng *rand.Rand) [][]byte {
	var out [][]byte
	mut := func(f func(c []byte) []byte) {
		c := f(append([]byte(nil), b...))
		out = append(out, c)
	}
	for i := 0; i < len(b); i++ {
		out = append(out, append([]byte(nil), b[:i]...))
	}
	mut(func(c []byte) []byte { return append(c, 0) })
	mut(func(c []byte) []byte { c[0] ^= 1; return c })
	mut(func(c []byte) []byte { c[4] = 2; return c })
	mut(func(c []byte) []byte { binary.LittleEndian.PutUint16(c[6:], 999); return c })
	mut(func(c []byte) []byte { binary.LittleEndian.PutUint16(c[6:], 0); return c })
	mut(func(c []byte) []byte { c[12] |= 4; return c })
	mut(func(c []byte) []byte { binary.LittleEndian.PutUint32(c[8:], uint32(len(c)+1)); return c })
	mut(func(c []byte) []byte { binary.LittleEndian.PutUint32(c[8:], uint32(len(c)-1)); return c[:len(c)-1] })
	mut(func(c []byte) []byte { binary.LittleEndian.PutUint32(c[8:], MaxMessage+1); return c })
	mut(func(c []byte) []byte { binary.LittleEndian.PutUint32(c[8:], 0xFFFFFFFF); return c })
	mut(func(c []byte) []byte { binary.LittleEndian.PutUint32(c[8:], 23); return c })
	// Every aligned u32 and u16 in the body set to large values: hits
	// variable lengths, pads, ranges and address families.
	for off := HeaderSize; off+4 <= len(b); off += 4 {
		for _, v := range []uint32{1, 7, 257, 65536, 0x7FFFFFFF, 0xFFFFFFFF} {
			mut(func(c []byte) []byte { binary.LittleEndian.PutUint32(c[off:], v); return c })
		}
		mut(func(c []byte) []byte { binary.LittleEndian.PutUint16(c[off:], 7); return c })
	}
	for i := 0; i < 60; i++ {
		mut(func(c []byte) []byte {
			for n := 1 + rng.IntN(3); n > 0; n-- {
				c[rng.IntN(len(c))] = byte(rng.Uint32())
			}
			return c
		})
	}
	return out
}

func needCC(t *testing.T) string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no C compiler (cc) on PATH, required when CI=true: %v", err)
		}
		t.Skipf("no C compiler (cc) on PATH: %v", err)
	}
	return cc
}

// buildCTest compiles testdata/ctest/ctest.c (strict warnings, and with
// AddressSanitizer and UBSan when the toolchain supports them).
func buildCTest(t *testing.T) string {
	cc := needCC(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "ctest")
	strict := []string{"-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-Wsign-conversion", "-pedantic",
		"-o", bin, filepath.Join("testdata", "ctest", "ctest.c")}
	san := append([]string{"-fsanitize=address,undefined", "-fno-sanitize-recover=all"}, strict...)
	if out, err := exec.Command(cc, san...).CombinedOutput(); err == nil {
		return bin
	} else {
		t.Logf("sanitizer build failed, building without sanitizers: %v\n%s", err, out)
	}
	if out, err := exec.Command(cc, strict...).CombinedOutput(); err != nil {
		t.Fatalf("compile ctest: %v\n%s", err, out)
	}
	return bin
}

// TestCGolden runs the C helpers of mpproto.h over every golden vector and
// thousands of corrupt variants, and requires the C output (dump and
// re-encoding, or the error kind) to equal what the Go codec produces.
func TestCGolden(t *testing.T) {
	bin := buildCTest(t)
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.bin"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}

	// File mode: each golden file decodes and re-encodes to itself.
	out, err := exec.Command(bin, files...).CombinedOutput()
	if err != nil {
		t.Fatalf("ctest on golden files: %v\n%s", err, out)
	}
	var want strings.Builder
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		exp := expectC(t, b)
		if !strings.Contains(exp, "enc "+hex.EncodeToString(b)+"\n") {
			t.Fatalf("%s: Go does not round-trip it: %s", f, exp)
		}
		want.WriteString(exp)
	}
	if got := string(out); got != want.String() {
		t.Fatalf("C output on golden files differs\n%s", firstDiff(got, want.String()))
	}

	// Stream mode: golden vectors plus corrupt variants.
	rng := rand.New(rand.NewPCG(1, 2))
	var in bytes.Buffer
	var inputs [][]byte
	for _, f := range files {
		b, _ := os.ReadFile(f)
		inputs = append(inputs, b)
		inputs = append(inputs, corruptions(b, rng)...)
	}
	kinds := map[string]int{}
	want.Reset()
	for _, b := range inputs {
		in.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(b))))
		in.Write(b)
		exp := expectC(t, b)
		if k, ok := strings.CutPrefix(exp, "err "); ok {
			kinds[strings.TrimSuffix(k, "\n.\n")]++
		} else {
			kinds["ok"]++
		}
		want.WriteString(exp)
	}
	cmd := exec.Command(bin, "-")
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("ctest stream: %v\n%s", err, stderr.String())
	}
	if string(got) != want.String() {
		t.Fatalf("C and Go disagree on %d inputs\n%s", len(inputs), firstDiff(string(got), want.String()))
	}
	for _, s := range sentinels {
		if kinds[s.Error()] == 0 {
			t.Errorf("no corrupt input produced %q; counts %v", s, kinds)
		}
	}
	t.Logf("%d inputs, outcomes %v", len(inputs), kinds)
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			lo := max(0, i-8)
			ctx := strings.Join(w[lo:min(i+1, len(w))], "\n")
			return fmt.Sprintf("line %d: C %q, Go %q\nGo context:\n%s", i+1, gl, wl, ctx)
		}
	}
	return "no line differs"
}
