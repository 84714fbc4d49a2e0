package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/test/harness"
)

// repoRoot is the checkout this test file is in.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// makeIn runs make in the checkout with the built binaries of the suite.
func makeIn(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-s", "BIN=" + harness.BinDir()}, args...)...)
	cmd.Dir = repoRoot()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// files lists the regular files under dir, relative to it.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, "/"+rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// loadConfig parses a configuration with the daemon's own parser and
// validates it.
func loadConfig(t *testing.T, path string) config.Config {
	t.Helper()
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("the daemon cannot load %s: %v", path, err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("%s does not validate: %v", path, err)
	}
	return c
}

// TestDefaultConfig loads the shipped default configuration with the
// daemon's parser: it must be valid, name the packaged paths and have no
// uplink (the package starts the daemon only once uplinks are added).
func TestDefaultConfig(t *testing.T) {
	c := loadConfig(t, filepath.Join(repoRoot(), "deploy", "isolator.yaml"))
	if len(c.Uplinks) != 0 || c.Socket != config.DefaultSocket || c.API != config.DefaultAPI || c.StateDir != config.DefaultStateDir {
		t.Fatalf("default configuration: uplinks %v, socket %s, api %s, state %s", c.Uplinks, c.Socket, c.API, c.StateDir)
	}
}

// TestMakeInstall runs make install-files and make uninstall into a
// staging DESTDIR and checks every file, the unit's paths, the completions
// and that a changed configuration survives uninstall.
func TestMakeInstall(t *testing.T) {
	for _, b := range []string{"isolator", "mpshim", "netflow", "libmpshim.so"} {
		harness.Binary(t, b)
	}
	harness.NeedFiles(t, "/usr/bin/make")
	dest := t.TempDir()
	makeIn(t, "install-files", "DESTDIR="+dest, "PREFIX=/opt/mp")
	want := []string{
		"/etc/mpshim/isolator.yaml",
		"/opt/mp/bin/isolator", "/opt/mp/bin/mpshim", "/opt/mp/bin/netflow",
		"/opt/mp/lib/mpshim/libmpshim.so",
		"/opt/mp/lib/systemd/system/isolator.service",
		"/opt/mp/share/bash-completion/completions/isolator",
		"/opt/mp/share/bash-completion/completions/mpshim",
		"/opt/mp/share/bash-completion/completions/netflow",
		"/opt/mp/share/doc/mpshim/README.md",
		"/opt/mp/share/zsh/site-functions/_isolator",
		"/opt/mp/share/zsh/site-functions/_mpshim",
		"/opt/mp/share/zsh/site-functions/_netflow",
	}
	if got := files(t, dest); !slices.Equal(got, want) {
		t.Fatalf("installed files:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "opt/mp/lib/systemd/system/isolator.service"))
	for _, line := range []string{"ExecStart=/opt/mp/bin/isolator run --config /etc/mpshim/isolator.yaml", "Type=notify", "Restart=on-failure", "LimitNOFILE=1048576"} {
		if !strings.Contains(string(unit), "\n"+line+"\n") {
			t.Errorf("unit lacks %q", line)
		}
	}
	if strings.Contains(string(unit), "@") {
		t.Errorf("unit has an unfilled @VARIABLE@:\n%s", unit)
	}
	// The bash completion is a real one: bash sources it and it registers
	// a completion function for the command.
	for _, c := range []string{"isolator", "mpshim", "netflow"} {
		out, err := exec.Command("bash", "-c", `source "$1" && complete -p "$2"`, "bash",
			filepath.Join(dest, "opt/mp/share/bash-completion/completions", c), c).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "-F") {
			t.Errorf("bash completion of %s: %v %s", c, err, out)
		}
	}
	// The installed launcher finds the library under PREFIX/lib/mpshim.
	out, err := exec.Command(filepath.Join(dest, "opt/mp/bin/mpshim"), "doctor", "--socket", filepath.Join(dest, "none.sock"), "--api", filepath.Join(dest, "none")).CombinedOutput()
	if !strings.Contains(string(out), "ok    library "+filepath.Join(dest, "opt/mp/lib/mpshim/libmpshim.so")) {
		t.Errorf("installed mpshim doctor (%v):\n%s", err, out)
	}
	loadConfig(t, filepath.Join(dest, "etc/mpshim/isolator.yaml"))

	// A second install keeps a changed configuration; uninstall removes
	// everything else and keeps it.
	conf := filepath.Join(dest, "etc/mpshim/isolator.yaml")
	f, _ := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("# changed by the admin\n")
	f.Close()
	makeIn(t, "install-files", "DESTDIR="+dest, "PREFIX=/opt/mp")
	makeIn(t, "uninstall", "DESTDIR="+dest, "PREFIX=/opt/mp")
	if got := files(t, dest); !slices.Equal(got, []string{"/etc/mpshim/isolator.yaml"}) {
		t.Fatalf("after uninstall: %v, want only the changed configuration", got)
	}
	if b, _ := os.ReadFile(conf); !strings.HasSuffix(string(b), "# changed by the admin\n") {
		t.Fatal("install overwrote the changed configuration")
	}
	// An unchanged configuration goes with uninstall.
	os.Remove(conf)
	makeIn(t, "install-files", "DESTDIR="+dest, "PREFIX=/opt/mp")
	makeIn(t, "uninstall", "DESTDIR="+dest, "PREFIX=/opt/mp")
	if got := files(t, dest); len(got) != 0 {
		t.Fatalf("after uninstall: %v left", got)
	}
}
