package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mpshim/mpshim/test/topo"
)

// runscBox is the runsc side: one gVisor sandbox with --network=sandbox in
// a namespace of its own (a macvlan of the uplink, like the native side),
// whose root file system is the host's under an overlay in the sandbox's
// memory (--overlay2=root:memory: what the servers write never reaches the
// host), and which runs the same servers as every other side.
type runscBox struct {
	ns    *topo.NS
	root  string // runsc's state directory
	id    string // the container's name
	proc  *topo.Proc
	nginx *nginx
	bin   string
}

// ociSpec is the part of an OCI runtime configuration the box needs.
type ociSpec struct {
	OCIVersion string     `json:"ociVersion"`
	Process    ociProcess `json:"process"`
	Root       struct {
		Path     string `json:"path"`
		Readonly bool   `json:"readonly"`
	} `json:"root"`
	Hostname string     `json:"hostname"`
	Mounts   []ociMount `json:"mounts"`
	Linux    struct {
		Namespaces []ociNS `json:"namespaces"`
	} `json:"linux"`
}

type ociProcess struct {
	User struct {
		UID int `json:"uid"`
		GID int `json:"gid"`
	} `json:"user"`
	Args         []string `json:"args"`
	Env          []string `json:"env"`
	Cwd          string   `json:"cwd"`
	Capabilities struct {
		Bounding  []string `json:"bounding"`
		Effective []string `json:"effective"`
		Permitted []string `json:"permitted"`
	} `json:"capabilities"`
	Rlimits []ociRlimit `json:"rlimits"`
}

type ociRlimit struct {
	Type string `json:"type"`
	Hard uint64 `json:"hard"`
	Soft uint64 `json:"soft"`
}

type ociMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options,omitempty"`
}

type ociNS struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
}

// sh quotes s for /bin/sh.
func sh(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// startRunsc writes the bundle and boots the sandbox, pinned to the server
// CPU.
func (e *env) startRunsc(ctx context.Context) error {
	b := e.runsc
	b.bin = e.runscBin
	dir := filepath.Join(e.dir, "runsc")
	bundle := filepath.Join(dir, "bundle")
	b.root = filepath.Join(dir, "state")
	redisDir := filepath.Join(dir, "redis")
	for _, d := range []string{bundle, b.root, redisDir, filepath.Join(dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var err error
	if b.nginx, err = e.writeNginx(b.ns, "runsc-nginx"); err != nil {
		return err
	}
	var cmds []string
	cmds = append(cmds, strings.Join([]string{"/usr/sbin/nginx", "-c", sh(b.nginx.conf), "-e", sh(filepath.Join(b.nginx.dir, "error.log"))}, " "))
	cmds = append(cmds, fmt.Sprintf("/usr/bin/iperf3 -s -p %d >/dev/null 2>&1 &", iperfPort))
	// Each server runs in the background of the container's shell, which
	// then waits for them: the container lives as long as they do.
	for _, c := range e.smallServers(redisDir) {
		var q []string
		for _, a := range c {
			q = append(q, sh(a))
		}
		cmds = append(cmds, strings.Join(q, " ")+" >/dev/null 2>&1 &")
	}
	cmds = append(cmds, "wait")
	// One command per line: set -e stops at a server that fails to start.
	script := "set -e\n" + strings.Join(cmds, "\n")
	var spec ociSpec
	spec.OCIVersion = "1.0.0"
	spec.Process.Args = []string{"/bin/sh", "-c", script}
	spec.Process.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	spec.Process.Cwd = "/"
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID", "CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_SYS_RESOURCE"}
	spec.Process.Capabilities.Bounding = caps
	spec.Process.Capabilities.Effective = caps
	spec.Process.Capabilities.Permitted = caps
	spec.Process.Rlimits = []ociRlimit{{Type: "RLIMIT_NOFILE", Hard: e.noFile, Soft: e.noFile}}
	// Writable through the memory overlay; runsc refuses writes to a
	// read-only root's bind mounts as well, so the servers' logs and pid
	// files land in the overlay.
	spec.Root.Path, spec.Root.Readonly = "/", false
	spec.Hostname = "mpbench-runsc"
	spec.Mounts = []ociMount{{Destination: "/proc", Type: "proc", Source: "proc"}}
	spec.Linux.Namespaces = []ociNS{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}, {Type: "network", Path: b.ns.Path()}}
	js, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), js, 0o644); err != nil {
		return err
	}
	b.id = filepath.Base(e.dir)
	name, args := e.server(b.bin, b.flags("--debug-log", filepath.Join(dir, "logs")+"/", "run", "--bundle", bundle, b.id)...)
	if b.proc, err = b.ns.Start(ctx, name, args...); err != nil {
		return err
	}
	// The sandbox is up once its nginx answers.
	t := e.targets()["runsc"]
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := e.tp.WAN.Command(cctx, "curl", "-sS", "--fail", "-o", "/dev/null", "--max-time", "2", t.url()).Run()
		cancel()
		if err == nil {
			break
		}
		select {
		case <-b.proc.Done():
			return fmt.Errorf("runsc exited: %s", tail(b.proc.Output(), 3000))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("runsc's nginx did not answer within 60 s: %v: %s", err, tail(b.proc.Output(), 3000))
		}
		time.Sleep(300 * time.Millisecond)
	}
	slog.Info("runsc sandbox serving", "addr", runscAddr, "pid", b.proc.PID())
	return nil
}

// flags are runsc's global flags, then args.
func (b *runscBox) flags(args ...string) []string {
	return append([]string{"--root", b.root, "--ignore-cgroups", "--network=sandbox", "--overlay2=root:memory"}, args...)
}

// version names the runsc binary: the gVisor module version that
// scripts/build-runsc.sh stamped next to it, else what it says itself.
func (b *runscBox) version() string {
	if v, err := os.ReadFile(b.bin + ".version"); err == nil {
		return "runsc from gvisor.dev/gvisor " + strings.TrimSpace(string(v))
	}
	out, err := exec.Command(b.bin, "--version").CombinedOutput()
	if err != nil {
		return "runsc ?"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// stop kills and deletes the container; the topology kills whatever is
// left in its namespace.
func (b *runscBox) stop() {
	if b.proc == nil {
		return
	}
	for _, args := range [][]string{{"kill", b.id, "KILL"}, {"delete", "--force", b.id}} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if out, err := exec.CommandContext(ctx, b.bin, b.flags(args...)...).CombinedOutput(); err != nil {
			slog.Debug("runsc", "args", args, "err", err, "out", strconv.Quote(tail(string(out), 300)))
		}
		cancel()
	}
	_ = b.proc.Stop()
	b.proc = nil
}
