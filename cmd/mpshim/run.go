package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/mpnet"
)

// libName is the shim's file name.
const libName = "libmpshim.so"

// runOptions are the flags of `mpshim run`.
type runOptions struct {
	socket, loopback, fail, lib string
}

func runCmd() *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [--socket PATH] [--loopback ins] [--fail open] -- CMD [ARGS…]",
		Short: "Run CMD (and everything it forks and execs) under libmpshim.so",
		Long: `Run CMD with libmpshim.so preloaded, after checking that the isolator answers
on its registration socket and admits this uid/gid. LD_PRELOAD gets the
library appended; MPSHIM_SOCKET, MPSHIM_LOOPBACK and MPSHIM_FAIL are set only
for the flags given; the rest of the environment is left as it is. mpshim
then execs CMD, so CMD keeps mpshim's pid and its exit status is mpshim's.

libmpshim.so is looked up as --lib, then $MPSHIM_LIB, then next to the mpshim
binary (bin/ of a build), then in ../lib/mpshim/ relative to it (an install
under PREFIX). With --fail open an isolator that does not answer is only
warned about: the shim then leaves the sockets on the kernel.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return launch(o, args) },
	}
	f := cmd.Flags()
	f.SetInterspersed(false) // flags after CMD are CMD's
	f.StringVar(&o.socket, "socket", "", "the isolator's registration socket (default $MPSHIM_SOCKET, else "+mpnet.DefaultSocket+")")
	f.StringVar(&o.loopback, "loopback", "", "ins: send loopback traffic through the INS too (default: loopback stays on the kernel)")
	f.StringVar(&o.fail, "fail", "", "open: if the isolator cannot be reached, use the kernel (default: fail closed, ENETUNREACH)")
	f.StringVar(&o.lib, "lib", "", "path of libmpshim.so (default $MPSHIM_LIB, else found next to this binary)")
	return cmd
}

// socketPath is the registration socket the shim will use: the flag, else
// $MPSHIM_SOCKET, else the default.
func socketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if s := os.Getenv("MPSHIM_SOCKET"); s != "" {
		return s
	}
	return mpnet.DefaultSocket
}

// findLib returns the absolute path of libmpshim.so: the flag or
// $MPSHIM_LIB when set (which must exist), else next to the executable,
// else PREFIX/lib/mpshim for an executable in PREFIX/bin.
func findLib(flag string) (string, error) {
	want := flag
	if want == "" {
		want = os.Getenv("MPSHIM_LIB")
	}
	if want != "" {
		abs, err := filepath.Abs(want)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("%s: %w", libName, err)
		}
		return abs, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("locating %s: %w", libName, err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	dir := filepath.Dir(exe)
	tried := []string{filepath.Join(dir, libName), filepath.Join(dir, "..", "lib", "mpshim", libName)}
	for _, p := range tried {
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	return "", fmt.Errorf("%s not found (tried %s); give --lib or MPSHIM_LIB", libName, strings.Join(tried, ", "))
}

// preloadEnv returns env with lib appended to LD_PRELOAD (unless it is
// already there) and the MPSHIM_* variables of the flags set.
func preloadEnv(env []string, lib string, o runOptions) []string {
	set := map[string]string{}
	if o.socket != "" {
		set["MPSHIM_SOCKET"] = o.socket
	}
	if o.loopback != "" {
		set["MPSHIM_LOOPBACK"] = o.loopback
	}
	if o.fail != "" {
		set["MPSHIM_FAIL"] = o.fail
	}
	out := make([]string, 0, len(env)+len(set)+1)
	preload := lib
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, ok := set[k]; ok {
			continue
		}
		if k == "LD_PRELOAD" {
			if v != "" {
				preload = v
				// ld.so separates the list with spaces or colons.
				if !containsLib(v, lib) {
					preload = v + ":" + lib
				}
			}
			continue
		}
		out = append(out, kv)
	}
	out = append(out, "LD_PRELOAD="+preload)
	for _, k := range []string{"MPSHIM_SOCKET", "MPSHIM_LOOPBACK", "MPSHIM_FAIL"} {
		if v, ok := set[k]; ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

func containsLib(list, lib string) bool {
	for _, p := range strings.FieldsFunc(list, func(r rune) bool { return r == ' ' || r == ':' }) {
		if p == lib {
			return true
		}
	}
	return false
}

// probeError turns a failed probe of socket into the launcher's message
// and exit status.
func probeError(socket string, err error) *exitError {
	var re *mpnet.RefusedError
	switch {
	case errors.As(err, &re) && re.Errno == unix.EACCES:
		return &exitError{exitNoPerm, fmt.Errorf("the isolator at %s does not allow uid %d gid %d to register (allow_uids/allow_gids, --allow-uid/--allow-gid of isolator run)",
			socket, os.Getuid(), os.Getgid())}
	case errors.As(err, &re):
		return &exitError{exitUnavailable, fmt.Errorf("the isolator at %s refused this process: %v (is it the same mpshim version?)", socket, re.Errno)}
	case errors.Is(err, unix.EACCES):
		return &exitError{exitNoPerm, fmt.Errorf("no permission to connect to the isolator's socket %s (socket_mode/socket_group of its configuration): %v", socket, err)}
	}
	return &exitError{exitUnavailable, fmt.Errorf("the isolator does not answer on %s: %v\n  start it (systemctl start isolator, or isolator run …), or name its socket with --socket or MPSHIM_SOCKET", socket, err)}
}

// launch checks, prepares the environment and execs args.
func launch(o runOptions, args []string) error {
	switch o.loopback {
	case "", "ins", "kernel":
	default:
		return exitf(exitUsage, "--loopback %q: want ins (or kernel, the default)", o.loopback)
	}
	switch o.fail {
	case "", "open", "closed":
	default:
		return exitf(exitUsage, "--fail %q: want open (or closed, the default)", o.fail)
	}
	lib, err := findLib(o.lib)
	if err != nil {
		return &exitError{exitLauncher, err}
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return exitf(exitNotFound, "%s: command not found", args[0])
		}
		return exitf(exitCannotExec, "%s: %v", args[0], err)
	}
	socket := socketPath(o.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err = mpnet.Probe(ctx, socket)
	cancel()
	if err != nil {
		pe := probeError(socket, err)
		if o.fail != "open" {
			return pe
		}
		fmt.Fprintf(os.Stderr, "mpshim: warning: %v; running %s anyway (--fail open: its sockets stay on the kernel)\n", pe.err, args[0])
	}
	env := preloadEnv(os.Environ(), lib, o)
	err = syscall.Exec(path, args, env)
	return exitf(exitCannotExec, "exec %s: %v", path, err)
}
