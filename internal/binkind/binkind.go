// Package binkind tells from a program's file whether libmpshim.so can be
// preloaded into it: only a dynamically linked ELF executable of the
// shim's architecture that reaches the network through the C library can
// be interposed. Static binaries never run the dynamic loader, Go binaries
// make their system calls themselves, and set-user-ID programs run with
// LD_PRELOAD restricted by the loader.
package binkind

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Kind is what a program file is, as far as preloading goes.
type Kind int

// The kinds Inspect reports.
const (
	// Dynamic is a dynamically linked ELF program of this architecture
	// that links the C library: the shim can be preloaded.
	Dynamic Kind = iota
	// Static is an ELF program without a program interpreter: the dynamic
	// loader never runs, LD_PRELOAD is ignored.
	Static
	// Go is a program built by the Go toolchain: it makes its socket
	// system calls itself, past any preloaded library (use mpnet).
	Go
	// NoLibc is dynamically linked but does not link glibc's libc.so.6,
	// whose socket functions the shim replaces.
	NoLibc
	// OtherArch is an ELF program of another class or machine than the
	// shim's (x86-64 or the host's): the loader skips the library.
	OtherArch
	// Script starts with #!: what matters is its interpreter, Info.Interp.
	Script
	// NotELF is neither an ELF file nor a script.
	NotELF
)

func (k Kind) String() string {
	switch k {
	case Dynamic:
		return "dynamic"
	case Static:
		return "static"
	case Go:
		return "go"
	case NoLibc:
		return "no-libc"
	case OtherArch:
		return "other-arch"
	case Script:
		return "script"
	case NotELF:
		return "not-elf"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Info is what Inspect found.
type Info struct {
	Kind Kind
	// Interp is the ELF program interpreter (Dynamic, Go, NoLibc) or the
	// script's interpreter (Script).
	Interp string
	// Setuid is set when the file is set-user-ID or set-group-ID: the
	// loader then preloads only libraries from its trusted directories
	// that are themselves set-user-ID.
	Setuid bool
	// Machine is the ELF machine, for OtherArch.
	Machine elf.Machine
}

// Interposable reports whether the shim can be preloaded into the program
// (for a script: into its interpreter, which the caller inspects).
func (i Info) Interposable() bool { return i.Kind == Dynamic && !i.Setuid }

// Explain says in one sentence what Kind means for the shim.
func (i Info) Explain() string {
	var s string
	switch i.Kind {
	case Dynamic:
		s = "dynamically linked against libc: the shim can be preloaded"
	case Static:
		s = "statically linked: the dynamic loader never runs, so LD_PRELOAD and the shim are ignored and its sockets stay on the kernel"
	case Go:
		s = "a Go binary: it makes its socket system calls itself, past any preloaded library, so the shim cannot interpose; Go programs use the mpnet package instead"
	case NoLibc:
		s = "dynamically linked but not against glibc (libc.so.6): the shim replaces glibc's socket functions and would not see this program's"
	case OtherArch:
		s = fmt.Sprintf("built for %v, not this machine's architecture: the loader skips libmpshim.so", i.Machine)
	case Script:
		s = "a script run by " + i.Interp + ": the shim is preloaded into the interpreter"
	case NotELF:
		s = "not an ELF program or a script"
	}
	if i.Setuid {
		s += "; set-user-ID or set-group-ID: the loader ignores LD_PRELOAD for it"
	}
	return s
}

// maxScriptLine bounds the #! line read from a script.
const maxScriptLine = 256

// Inspect reads the program file at path.
func Inspect(path string) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Info{}, err
	}
	if !fi.Mode().IsRegular() {
		return Info{}, fmt.Errorf("%s: not a regular file", path)
	}
	info, err := Read(f, elf.Machine(hostMachine))
	if err != nil {
		return Info{}, fmt.Errorf("%s: %w", path, err)
	}
	info.Setuid = fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0
	return info, nil
}

// Read inspects a program file's contents; host is the machine the shim
// is built for. Anything in r is treated as hostile: a malformed ELF file
// is an error, never a panic.
func Read(r io.ReaderAt, host elf.Machine) (info Info, err error) {
	head := make([]byte, maxScriptLine)
	n, rerr := r.ReadAt(head, 0)
	if rerr != nil && !errors.Is(rerr, io.EOF) {
		return Info{}, rerr
	}
	head = head[:n]
	if bytes.HasPrefix(head, []byte("#!")) {
		line := head[2:]
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			return Info{}, errors.New("#! without an interpreter")
		}
		return Info{Kind: Script, Interp: fields[0]}, nil
	}
	if !bytes.HasPrefix(head, []byte(elf.ELFMAG)) {
		return Info{Kind: NotELF}, nil
	}
	defer func() {
		// debug/elf documents that it is not hardened against every
		// malformed input.
		if p := recover(); p != nil {
			info, err = Info{}, fmt.Errorf("malformed ELF file: %v", p)
		}
	}()
	ef, err := elf.NewFile(r)
	if err != nil {
		return Info{}, fmt.Errorf("malformed ELF file: %w", err)
	}
	defer ef.Close()
	if ef.Class != elf.ELFCLASS64 || ef.Machine != host {
		return Info{Kind: OtherArch, Machine: ef.Machine}, nil
	}
	for _, p := range ef.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		if p.Filesz > 4096 {
			return Info{}, errors.New("malformed ELF file: oversized PT_INTERP")
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return Info{}, fmt.Errorf("malformed ELF file: PT_INTERP: %w", err)
		}
		info.Interp = string(bytes.TrimRight(b, "\x00"))
	}
	if isGo(ef) {
		info.Kind = Go
		return info, nil
	}
	if info.Interp == "" {
		info.Kind = Static
		return info, nil
	}
	libs, err := ef.ImportedLibraries()
	if err != nil {
		return Info{}, fmt.Errorf("malformed ELF file: dynamic section: %w", err)
	}
	info.Kind = NoLibc
	for _, l := range libs {
		if filepath.Base(l) == "libc.so.6" {
			info.Kind = Dynamic
		}
	}
	return info, nil
}

// isGo reports whether the Go toolchain built ef: it leaves a build ID
// note or build information section in every binary it links.
func isGo(ef *elf.File) bool {
	for _, name := range []string{".note.go.buildid", ".go.buildinfo", ".gopclntab"} {
		if ef.Section(name) != nil {
			return true
		}
	}
	return false
}
