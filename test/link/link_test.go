// Package link runs the isolator with each INS link backend and real
// programs on both ends: Debian's nginx under libmpshim.so served to curl
// in wan over IPv4 and IPv6 (the INS sends), and curl under the shim
// fetching from a kernel nginx in wan (the INS receives). The INS run sandboxed, as in production,
// so a backend that needed a system call the sandbox forbids would kill
// them.
package link

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// nginxConf is a foreground nginx serving root on port 80.
func nginxConf(t *testing.T, dir, root string) string {
	t.Helper()
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events {}
http { access_log off; sendfile on; server { listen 80; listen [::]:80; root %[2]s; } }
`, dir, root)), 0o644); err != nil {
		t.Fatal(err)
	}
	return conf
}

func TestBackends(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl")
	page := make([]byte, 4<<20)
	if _, err := rand.Read(page); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, keys, backend, gso string }{
		{"default", "", "packet", "true"},
		{"packet without GSO", "backend=packet,gso=off", "packet", "false"},
		{"xdp", "backend=xdp", "xdp", "true"},
		{"xdp without GSO", "backend=xdp,gso=off", "xdp", "false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := topo.New(t, topo.Config{Uplinks: 1})
			ups := harness.DefaultUplinks(tp)
			for i := range ups {
				ups[i].Link = tc.keys
			}
			iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Uplinks: ups})
			before, err := iso.List()
			if err != nil || len(before) != 2 {
				t.Fatalf("isolator ls: %v %v", before, err)
			}
			for _, in := range before {
				if _, _, ok := iso.WaitLog(time.Time{}, 5*time.Second, "uplink added", fmt.Sprintf("ins=%d ", in.ID),
					"backend="+tc.backend, "gso="+tc.gso); !ok {
					t.Fatalf("INS %d did not log its uplink with backend=%s gso=%s", in.ID, tc.backend, tc.gso)
				}
			}
			dir := t.TempDir()
			os.Chmod(dir, 0o755)
			if err := os.WriteFile(filepath.Join(dir, "page.bin"), page, 0o644); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			shim := append(os.Environ(), "LD_PRELOAD="+harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+iso.Socket)

			// The INS send: nginx under the shim, curl in wan, one
			// fetch per INS address.
			srv := tp.App.Command(ctx, "/usr/sbin/nginx", "-c", nginxConf(t, filepath.Join(dir), dir))
			srv.Env = shim
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
			for _, in := range before {
				a4 := strings.Split(in.Uplinks[0].Addr4, "/")[0]
				a6 := strings.Split(in.Uplinks[0].Addr6, "/")[0]
				for _, url := range []string{fmt.Sprintf("http://%s/page.bin", a4), fmt.Sprintf("http://[%s]/page.bin", a6)} {
					waitServing(t, tp, url)
					harness.Fetch(t, tp.WAN, nil, url, page)
				}
			}

			// The INS receive: curl under the shim, nginx in wan.
			wdir := filepath.Join(dir, "wan")
			os.Mkdir(wdir, 0o755)
			if err := os.WriteFile(filepath.Join(wdir, "page.bin"), page, 0o644); err != nil {
				t.Fatal(err)
			}
			wsrv, err := tp.WAN.Start(ctx, "/usr/sbin/nginx", "-c", nginxConf(t, wdir, wdir))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { wsrv.Stop() })
			url := fmt.Sprintf("http://%s/page.bin", tp.Uplinks[0].WANAddr4)
			waitServing(t, tp, url)
			for range 2 {
				harness.Fetch(t, tp.App, shim, url, page)
			}

			// Both INS are still the processes that started: no
			// sandbox violation killed one.
			after, err := iso.List()
			if err != nil || len(after) != 2 {
				t.Fatalf("isolator ls after traffic: %v %v", after, err)
			}
			for i := range before {
				if after[i].PID != before[i].PID {
					t.Errorf("INS %d restarted (pid %d, now %d)", before[i].ID, before[i].PID, after[i].PID)
				}
			}
		})
	}
}

// waitServing waits until url answers from wan.
func waitServing(t *testing.T, tp *topo.Topology, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := tp.WAN.Run(context.Background(), "curl", "-sS", "-g", "-o", "/dev/null", "--fail", "--max-time", "2", url); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer", url)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
