package binkind

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// buildC compiles src with cc and the given flags into dir.
func buildC(t *testing.T, dir, name, src string, flags ...string) string {
	t.Helper()
	if _, err := exec.LookPath("cc"); err != nil {
		t.Skip("no C compiler (make test installs gcc)")
	}
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	args := append(append([]string{}, flags...), "-o", out, c)
	if b, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
		t.Fatalf("cc %v: %v\n%s", args, err, b)
	}
	return out
}

const helloC = "#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n"

func TestInspect(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable() // this test binary: built by Go
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh -e\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(dir, "text")
	if err := os.WriteFile(text, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	dyn := buildC(t, dir, "dyn", helloC)
	static := buildC(t, dir, "static", helloC, "-static")
	setuid := filepath.Join(dir, "setuid")
	b, _ := os.ReadFile(dyn)
	if err := os.WriteFile(setuid, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(setuid, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path   string
		kind         Kind
		interposable bool
		setuid       bool
	}{
		{"dynamic C", dyn, Dynamic, true, false},
		{"static C", static, Static, false, false},
		{"Go", self, Go, false, false},
		{"script", script, Script, false, false},
		{"text", text, NotELF, false, false},
		{"set-user-ID", setuid, Dynamic, false, true},
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		cases = append(cases, struct {
			name, path   string
			kind         Kind
			interposable bool
			setuid       bool
		}{"Debian's nginx", "/usr/sbin/nginx", Dynamic, true, false})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			info, err := Inspect(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if info.Kind != tc.kind || info.Interposable() != tc.interposable || info.Setuid != tc.setuid {
				t.Fatalf("Inspect(%s) = %+v (interposable %v), want kind %v, interposable %v, setuid %v",
					tc.path, info, info.Interposable(), tc.kind, tc.interposable, tc.setuid)
			}
			if info.Explain() == "" {
				t.Fatal("no explanation")
			}
		})
	}
	if info, _ := Inspect(script); info.Interp != "/bin/sh" {
		t.Errorf("script interpreter %q, want /bin/sh", info.Interp)
	}
	if _, err := Inspect(dir); err == nil {
		t.Error("Inspect of a directory succeeded")
	}
	if _, err := Inspect(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Errorf("Inspect of a missing file: %v, want not-exist", err)
	}
}

func TestOtherArch(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := Read(f, elf.EM_RISCV)
	if err != nil || info.Kind != OtherArch {
		t.Fatalf("Read for another machine = %+v, %v; want OtherArch", info, err)
	}
}

// FuzzRead feeds arbitrary bytes (seeded with the heads of real programs):
// Read must return an Info or an error, never panic.
func FuzzRead(f *testing.F) {
	for _, p := range []string{"/usr/sbin/nginx", "/bin/sh"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b[:min(len(b), 8192)])
		}
	}
	f.Add([]byte("#!/bin/sh\n"))
	f.Add([]byte("#!"))
	f.Add([]byte(elf.ELFMAG))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Read(bytes.NewReader(b), elf.EM_X86_64)
	})
}
