package sandbox_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/link"
	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/test/topo"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

const sandboxChildEnv = "MPSHIM_INS_SANDBOX_CHILD"

// TestSandbox re-executes the test binary as the daemon starts an INS: in
// fresh network, mount, pid, ipc and uts namespaces. The child builds two
// netstacks joined by a veth pair over AF_PACKET, enters the sandbox with
// an empty root and checks what it may and may not do afterwards; while it
// waits, this test checks from outside what the kernel says of its threads
// and its root, which the sealed child itself can no longer read.
func TestSandbox(t *testing.T) {
	topo.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSandboxChild$", "-test.v")
	cmd.Env = append(os.Environ(), sandboxChildEnv+"=1")
	// The child's own network namespace: the veth pair it creates exists
	// only there and vanishes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: sandbox.Cloneflags | syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rd := bufio.NewReader(stdout)
	for {
		line, err := rd.ReadString('\n')
		out.WriteString(line)
		if err != nil {
			cmd.Wait()
			t.Fatalf("sandboxed child ended before it was sealed: %v\n%s", err, out.String())
		}
		if strings.TrimSpace(line) == "SEALED" {
			break
		}
	}
	checkThreadStatus(t, cmd.Process.Pid)
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root/", cmd.Process.Pid)); err != nil || len(ents) != 0 {
		t.Errorf("child's root holds %d entries (%v), want an empty root", len(ents), err)
	}
	io.WriteString(stdin, "go on\n")
	rest, _ := io.ReadAll(rd)
	out.Write(rest)
	err = cmd.Wait()
	if err != nil || !bytes.Contains(out.Bytes(), []byte("SANDBOX-CHILD-OK")) {
		t.Fatalf("sandboxed child failed: %v\n%s", err, out.String())
	}
}

func TestSandboxChild(t *testing.T) {
	if os.Getenv(sandboxChildEnv) != "1" {
		t.Skip("helper: runs only re-executed by TestSandbox")
	}
	for _, args := range [][]string{
		{"link", "add", "va", "type", "veth", "peer", "name", "vb"},
		{"link", "set", "va", "up"},
		{"link", "set", "vb", "up"},
	} {
		if _, err := netns.RunIP(context.Background(), "", args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := netns.WriteSysctls(map[string]string{"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/disable_ipv6": "1"}); err != nil {
		t.Fatal(err)
	}
	ins, err := netstack.New(netstack.Config{ID: 7, GOMAXPROCS: 2, Uplinks: []netstack.UplinkConfig{{
		Name: "a", Interface: "va", Addr4: netip.MustParsePrefix("10.77.0.2/24"), Gateway4: netip.MustParseAddr("10.77.0.1"),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ins.Close()
	peer := newPacketPeer(t, "vb", netip.MustParsePrefix("10.77.0.1/24"))
	defer peer.Destroy()

	// Listeners on both sides, opened before the sandbox.
	insLn, err := gonet.ListenTCP(ins.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer insLn.Close()
	go instest.EchoServe(insLn)
	peerLn, err := gonet.ListenTCP(peer, tcpip.FullAddress{Port: 9}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer peerLn.Close()
	go instest.EchoServe(peerLn)

	if err := sandbox.Enter(sandbox.Options{NoFile: 4096, UID: 65534, GID: 65534, EmptyRoot: true}); err != nil {
		t.Fatalf("Sandbox: %v", err)
	}

	// Forbidden: executing programs and opening network sockets.
	if err := exec.Command("/bin/true").Run(); err == nil {
		t.Error("exec of /bin/true succeeded after Sandbox")
	}
	for _, dom := range []struct {
		name   string
		family int
		typ    int
	}{{"AF_INET", unix.AF_INET, unix.SOCK_STREAM}, {"AF_INET6", unix.AF_INET6, unix.SOCK_DGRAM}, {"AF_PACKET", unix.AF_PACKET, unix.SOCK_RAW}, {"AF_NETLINK", unix.AF_NETLINK, unix.SOCK_RAW}} {
		fd, err := unix.Socket(dom.family, dom.typ, 0)
		if err == nil {
			unix.Close(fd)
			t.Errorf("socket(%s) succeeded after Sandbox", dom.name)
		} else if !errors.Is(err, unix.EPERM) {
			t.Errorf("socket(%s) failed with %v, want EPERM from seccomp", dom.name, err)
		}
	}
	if _, err := os.OpenFile(filepath.Join(os.TempDir(), "mpshim-sandbox-probe"), os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		t.Error("creating a file succeeded after Sandbox")
	}
	if _, err := os.ReadFile("/etc/hostname"); err == nil {
		t.Error("reading a host file succeeded after Sandbox")
	}
	// Allowed: AF_UNIX socketpairs (the app data path).
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Errorf("socketpair(AF_UNIX) after Sandbox: %v", err)
	} else {
		unix.Close(fds[0])
		unix.Close(fds[1])
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur != 4096 || rl.Max != 4096 {
		t.Errorf("RLIMIT_NOFILE = %+v, %v; want 4096", rl, err)
	}
	// The test checks the threads' status from outside meanwhile.
	fmt.Println("SEALED")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatalf("waiting for the parent: %v", err)
	}

	// The netstack still works over the AF_PACKET link, both directions.
	echoCheck(t, ins.Stack(), tcpip.FullAddress{NIC: 1, Addr: instest.TCPAddr(netip.MustParseAddr("10.77.0.2"))}, "10.77.0.1", 9)
	echoCheck(t, peer, tcpip.FullAddress{}, "10.77.0.2", 7)
	// And the gateway probes (ICMP via the netstack, carrier via ioctl).
	instest.WaitFor(t, 3*time.Second, func() bool {
		u := ins.Uplinks()
		return len(u) == 1 && u[0].RTT > 0 && u[0].Carrier
	})
	fmt.Println("SANDBOX-CHILD-OK")
}

// checkThreadStatus requires every thread of pid to run as uid and gid
// 65534 with no capabilities, no new privileges and the seccomp filter.
func checkThreadStatus(t *testing.T, pid int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task/", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("list threads: %v", err)
	}
	allThreads := sandbox.AllThreadsAvailable()
	for _, task := range tasks {
		f, err := os.Open(dir + task.Name() + "/status")
		if err != nil {
			continue // thread exited
		}
		want := map[string]string{"CapInh": "0000000000000000", "CapPrm": "0000000000000000",
			"CapEff": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2",
			"Uid": "65534\t65534\t65534\t65534", "Gid": "65534\t65534\t65534\t65534"}
		if allThreads {
			// Without cgo the bounding set is dropped on every thread
			// too; with cgo only on the sandboxing thread (NoNewPrivs
			// and the exec ban make it moot).
			want["CapBnd"] = "0000000000000000"
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if w, check := want[k]; ok && check {
				if strings.TrimSpace(v) != w {
					t.Errorf("thread %s: %s = %s, want %s", task.Name(), k, strings.TrimSpace(v), w)
				}
				delete(want, k)
			}
		}
		f.Close()
		if len(want) != 0 {
			t.Errorf("thread %s: status lacks %v", task.Name(), want)
		}
	}
}

func newPacketPeer(t *testing.T, ifname string, addr netip.Prefix) *stack.Stack {
	t.Helper()
	_, ep, err := link.Open(link.Config{Interface: ifname})
	if err != nil {
		t.Fatal(err)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, icmp.NewProtocol4},
	})
	if err := s.CreateNIC(1, ep); err != nil {
		t.Fatal(err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: instest.TCPAddr(addr.Addr()), PrefixLen: addr.Bits()}}
	if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.AddRoute(tcpip.Route{Destination: tcpip.AddressWithPrefix{Address: instest.TCPAddr(addr.Masked().Addr()), PrefixLen: addr.Bits()}.Subnet(), NIC: 1})
	return s
}

func echoCheck(t *testing.T, s *stack.Stack, local tcpip.FullAddress, dst string, port uint16) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialTCPWithBind(ctx, s, local, tcpip.FullAddress{Addr: instest.TCPAddr(netip.MustParseAddr(dst)), Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial %s:%d: %v", dst, port, err)
	}
	defer c.Close()
	msg := make([]byte, 256<<10)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo via %s:%d: %v (equal=%v)", dst, port, err, bytes.Equal(got, msg))
	}
}
