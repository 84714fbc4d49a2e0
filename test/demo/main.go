// Command demo runs mpshim's main job end to end on a built-in default:
// a test topology with two uplinks, the isolator with two INS, Debian's
// nginx (master and two workers, unmodified) under libmpshim.so in an app
// namespace that has only loopback, and curl in the wan namespace fetching
// from every INS address. It prints what it does and exits non-zero if any
// step fails; everything it made is removed on exit.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/test/topo"
)

func main() {
	bin := flag.String("bin", "bin", "directory of the built binaries")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	fmt.Println("demo: OK")
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(binDir string) error {
	binDir, _ = filepath.Abs(binDir)
	isolator, lib := filepath.Join(binDir, "isolator"), filepath.Join(binDir, "libmpshim.so")
	for _, p := range []string{isolator, lib, "/usr/sbin/nginx", "/usr/bin/curl"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s missing (run make demo, which builds and installs it): %w", p, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	step("building network namespaces: wan (clients), gw (uplinks), app (loopback only), 2 veth uplinks")
	tp, err := topo.Build(ctx, topo.Config{Uplinks: 2})
	if err != nil {
		return err
	}
	defer tp.Close()
	dir, err := os.MkdirTemp("", "mpshim-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	apiSock, regSock := filepath.Join(dir, "api.sock"), filepath.Join(dir, "isolator.sock")

	step("starting the isolator in gw with 2 INS, one NIC on each uplink")
	args := []string{"run", "--api", apiSock, "--socket", regSock, "--ins", "2", "--allow-uid", "0", "--allow-uid", "33"}
	for _, u := range tp.Uplinks {
		args = append(args, "--uplink", fmt.Sprintf("up%d=%s,pool4=%s/24,gw4=%s,pool6=%s/64",
			u.Index, u.GWIf, u.HostAddr4(0), u.WANAddr4, u.HostAddr6(0)))
	}
	iso, err := tp.GW.Start(ctx, isolator, args...)
	if err != nil {
		return err
	}
	defer iso.Stop()
	var infos []api.INSInfo
	for deadline := time.Now().Add(60 * time.Second); ; {
		out, err := exec.Command(isolator, "--api", apiSock, "ls", "-o", "json").Output()
		if err == nil && json.Unmarshal(out, &infos) == nil && len(infos) == 2 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("isolator did not come up:\n%s", iso.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	ls, _ := exec.Command(isolator, "--api", apiSock, "ls").CombinedOutput()
	fmt.Print(string(ls))

	step("starting Debian's nginx under LD_PRELOAD=libmpshim.so in the app namespace (master + 2 workers)")
	root := filepath.Join(dir, "www")
	os.MkdirAll(root, 0o755)
	page := bytes.Repeat([]byte("mpshim serves nginx from an isolated network stack.\n"), 20000)
	if err := os.WriteFile(filepath.Join(root, "index.html"), page, 0o644); err != nil {
		return err
	}
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon on;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 1024; }
http {
    access_log %[1]s/access.log;
    sendfile on;
    keepalive_timeout 30;
    server {
        listen 80;
        listen [::]:80;
        root %[2]s;
    }
}
`, dir, root)), 0o644)
	nginx := tp.App.Command(ctx, "/usr/sbin/nginx", "-c", conf, "-e", filepath.Join(dir, "error.log"))
	nginx.Env = append(os.Environ(), "LD_PRELOAD="+lib, "MPSHIM_SOCKET="+regSock)
	if out, err := nginx.CombinedOutput(); err != nil {
		logb, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return fmt.Errorf("nginx: %v\n%s\n%s\nisolator log:\n%s", err, out, logb, iso.Output())
	}
	defer func() {
		q := tp.App.Command(context.Background(), "/usr/sbin/nginx", "-c", conf, "-s", "quit")
		q.Env = nginx.Env
		q.Run()
		if b, err := os.ReadFile(filepath.Join(dir, "nginx.pid")); err == nil {
			var pid int
			fmt.Sscan(string(b), &pid)
			for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()

	want := sha256.Sum256(page)
	step("fetching %d KiB with curl from wan on every INS address of both uplinks", len(page)>>10)
	time.Sleep(300 * time.Millisecond)
	for _, in := range infos {
		for _, u := range in.Uplinks {
			for _, addr := range []string{u.Addr4, u.Addr6} {
				if addr == "" {
					continue
				}
				host := strings.Split(addr, "/")[0]
				url := "http://" + host + "/index.html"
				if strings.Contains(host, ":") {
					url = "http://[" + host + "]/index.html"
				}
				out, err := tp.WAN.Command(ctx, "curl", "-sS", "--max-time", "10", url).Output()
				if err != nil {
					return fmt.Errorf("curl %s from wan: %v\nisolator log:\n%s", url, err, iso.Output())
				}
				got := sha256.Sum256(out)
				if got != want {
					return fmt.Errorf("curl %s: %d bytes, sha256 %s, want %s", url, len(out), hex.EncodeToString(got[:8]), hex.EncodeToString(want[:8]))
				}
				fmt.Printf("    INS %d %s %-28s %d bytes, sha256 ok\n", in.ID, u.Name, url, len(out))
			}
		}
	}
	ls, _ = exec.Command(isolator, "--api", apiSock, "ls").CombinedOutput()
	fmt.Print(string(ls))
	return nil
}
