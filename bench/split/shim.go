package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// shimOnly measures the acceptance path: curl under the shim in the app
// namespace fetches the file from nginx behind site B; site A is an
// isolator daemon in the gw namespace whose configuration carries
// 10.20.0.0/16 through B, site B `isolator split run` in the wan namespace
// with nginx on 10.20.0.5 (its loopback). bin holds isolator and
// libmpshim.so (make build).
func (b *bench) shimOnly(ctx context.Context, bin string, runs int) error {
	iso, lib := filepath.Join(bin, "isolator"), filepath.Join(bin, "libmpshim.so")
	for _, f := range []string{iso, lib} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("--only shim needs %s (make build): %w", f, err)
		}
	}
	tp, dir := b.tp, b.dir
	if out, err := tp.WAN.Run(ctx, "ip", "addr", "add", "10.20.0.5/32", "dev", "lo"); err != nil {
		return fmt.Errorf("address behind B: %v: %s", err, out)
	}
	conf := filepath.Join(dir, "nginx-b.conf")
	c := fmt.Sprintf("daemon off;\npid %[1]s/nginx-b.pid;\nerror_log %[1]s/error-b.log;\nworker_processes 1;\nevents { worker_connections 64; }\nhttp {\n access_log off;\n sendfile on;\n server {\n  listen 10.20.0.5:8080;\n  root %[1]s;\n }\n}\n", dir)
	if err := os.WriteFile(conf, []byte(c), 0o644); err != nil {
		return err
	}
	p, err := tp.WAN.Start(ctx, "nginx", "-c", conf)
	if err != nil {
		return err
	}
	b.procs = append(b.procs, p)
	keys := map[string]string{}
	for _, n := range []string{"a", "b"} {
		out, err := tp.WAN.Run(ctx, iso, "split", "keygen", "--out", filepath.Join(dir, n+".key"))
		if err != nil {
			return fmt.Errorf("keygen: %v: %s", err, out)
		}
		keys[n] = strings.TrimSpace(out)
	}
	var pathsA, pathsB strings.Builder
	var uplinks []string
	for i, u := range tp.Uplinks {
		a, bb := fmt.Sprintf("%s:7000", addrB(i)), fmt.Sprintf("%s:7000", u.WANAddr4)
		fmt.Fprintf(&pathsA, "      - {local: %s, endpoint: %s}\n", a, bb)
		fmt.Fprintf(&pathsB, "      - {local: %s, endpoint: %s}\n", bb, a)
		uplinks = append(uplinks, "--uplink", fmt.Sprintf("up%d=%s,pool4=%s/24,gw4=%s", i, u.GWIf, u.HostAddr4(0), u.WANAddr4))
	}
	cfgA := fmt.Sprintf("split_key: %[1]s/a.key\nsplit_status: %[1]s/a.sock\npeers:\n  - name: b\n    key: %[2]s\n    paths:\n%[3]ssplit:\n  - {dst: 10.20.0.0/16, peer: b}\n", dir, keys["b"], pathsA.String())
	cfgB := fmt.Sprintf("key: %[1]s/b.key\nstatus: %[1]s/b.sock\npeers:\n  - name: a\n    key: %[2]s\n    paths:\n%[3]sexpose:\n  - {peer: a, dst: 10.20.0.5/32}\n", dir, keys["a"], pathsB.String())
	for name, c := range map[string]string{"a.yaml": cfgA, "b.yaml": cfgB} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(c), 0o600); err != nil {
			return err
		}
	}
	if p, err = tp.WAN.Start(ctx, iso, "split", "run", "--config", filepath.Join(dir, "b.yaml")); err != nil {
		return err
	}
	b.procs = append(b.procs, p)
	api, sock := filepath.Join(dir, "api.sock"), filepath.Join(dir, "isolator.sock")
	args := append([]string{"run", "--config", filepath.Join(dir, "a.yaml"), "--api", api, "--socket", sock, "--ins", "1", "--max-ins", "4",
		"--state-dir", filepath.Join(dir, "state")}, uplinks...)
	if p, err = tp.GW.Start(ctx, iso, args...); err != nil {
		return err
	}
	b.procs = append(b.procs, p)
	daemon := p
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := tp.GW.Run(ctx, iso, "peer", "ls", "--status", filepath.Join(dir, "a.sock"), "-o", "json")
		if err == nil && strings.Contains(out, `"up": true`) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no split session within 60 s: %v %s\ndaemon:\n%s", err, out, daemon.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("%-5s %10s %9s\n", "run", "Mbit/s", "of sum")
	env := append(os.Environ(), "LD_PRELOAD="+lib, "MPSHIM_SOCKET="+sock)
	for r := range runs {
		out := filepath.Join(dir, "body")
		cmd := tp.App.Command(ctx, "curl", "-sS", "--fail", "-o", out, "-w", "%{speed_download}", "http://10.20.0.5:8080/f")
		cmd.Env = env
		res, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("curl under the shim: %v: %s\ndaemon:\n%s", err, res, daemon.Output())
		}
		bps, err := strconv.ParseFloat(strings.TrimSpace(string(res)), 64)
		if err != nil {
			return fmt.Errorf("curl speed %q: %w", res, err)
		}
		f, err := os.Open(out)
		if err != nil {
			return err
		}
		h := sha256.New()
		io.Copy(h, f)
		f.Close()
		os.Remove(out)
		if got := fmt.Sprintf("%x", h.Sum(nil)); got != b.sum {
			return fmt.Errorf("sha256 %s, want %s", got, b.sum)
		}
		v := bps * 8 / 1e6
		fmt.Printf("%-5d %10.1f %9.3f\n", r+1, v, v/sumMbit)
	}
	return nil
}
