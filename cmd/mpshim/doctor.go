package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/binkind"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/mpnet"
)

func doctorCmd() *cobra.Command {
	var socket, apiPath, lib string
	cmd := &cobra.Command{
		Use:   "doctor [CMD]",
		Short: "Check what running under the shim needs, and say what is wrong",
		Long: `Check, in order: libmpshim.so is found; the isolator answers on its
registration socket; it allows this uid/gid; its INS are up; its uplinks are
up (these two through the API socket, when this user may read it); and, for
CMD, that the program can be interposed at all: a statically linked or Go
binary cannot be.

Every line starts with ok, FAIL or "--" (could not be checked). The exit
status is 0 when nothing failed, 1 otherwise.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := &doctor{w: cmd.OutOrStdout()}
			d.run(socketPath(socket), apiPath, lib, args)
			if d.failed {
				return &exitError{1, errors.New("doctor: something above FAILed")}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "the isolator's registration socket (default $MPSHIM_SOCKET, else "+mpnet.DefaultSocket+")")
	f.StringVar(&apiPath, "api", config.DefaultAPI, "the isolator's API socket")
	f.StringVar(&lib, "lib", "", "path of libmpshim.so (default $MPSHIM_LIB, else found next to this binary)")
	return cmd
}

// doctor prints one line per check.
type doctor struct {
	w      io.Writer
	failed bool
}

func (d *doctor) ok(format string, args ...any) {
	fmt.Fprintf(d.w, "ok    "+format+"\n", args...)
}

func (d *doctor) fail(format string, args ...any) {
	d.failed = true
	fmt.Fprintf(d.w, "FAIL  "+format+"\n", args...)
}

func (d *doctor) skip(format string, args ...any) {
	fmt.Fprintf(d.w, "--    "+format+"\n", args...)
}

func (d *doctor) run(socket, apiPath, lib string, args []string) {
	if p, err := findLib(lib); err != nil {
		d.fail("%v", err)
	} else {
		d.ok("library %s", p)
	}
	d.registration(socket)
	d.daemon(apiPath)
	if len(args) == 1 {
		d.program(args[0])
	}
}

// registration probes the registration socket.
func (d *doctor) registration(socket string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := mpnet.Probe(ctx, socket)
	var re *mpnet.RefusedError
	switch {
	case err == nil:
		d.ok("the isolator answers on %s", socket)
		d.ok("uid %d gid %d may register (the isolator's answer)", os.Getuid(), os.Getgid())
	case errors.As(err, &re) && re.Errno == unix.EACCES:
		d.ok("the isolator answers on %s", socket)
		d.fail("uid %d gid %d may not register: the isolator refuses (EACCES); add it to allow_uids/allow_gids (--allow-uid/--allow-gid)", os.Getuid(), os.Getgid())
	case errors.As(err, &re) && re.Errno == unix.EINVAL:
		// An isolator from before registration probes: it checked the
		// uid/gid before refusing the flag it does not know.
		d.ok("the isolator answers on %s", socket)
		d.ok("uid %d gid %d may register (an older isolator, which does not know probes, got past the uid/gid check)", os.Getuid(), os.Getgid())
	case errors.As(err, &re):
		d.ok("the isolator answers on %s", socket)
		d.fail("the isolator refuses this process: %v (a different mpshim version?)", re.Errno)
	case errors.Is(err, unix.EACCES):
		d.fail("no permission to connect to %s (socket_mode/socket_group of the isolator): %v", socket, err)
	default:
		d.fail("the isolator does not answer on %s: %v", socket, err)
	}
}

// daemon checks the INS and uplinks through the API socket.
func (d *doctor) daemon(apiPath string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := api.Dial(ctx, apiPath)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			d.skip("INS and uplinks not checked: no permission on the API socket %s (it is the daemon owner's; run doctor as root)", apiPath)
		} else {
			d.skip("INS and uplinks not checked: the API socket %s cannot be used: %v", apiPath, err)
		}
		return
	}
	defer c.Close()
	resp, err := c.Call(ctx, api.Request{Op: api.OpList})
	if err != nil {
		d.fail("isolator ls through %s: %v", apiPath, err)
		return
	}
	up := 0
	for _, i := range resp.INS {
		if i.State == "running" {
			up++
		} else {
			d.fail("INS %d (pid %d) is %s", i.ID, i.PID, i.State)
		}
	}
	if up == 0 {
		d.fail("no INS running (%d listed): apps' sockets have nowhere to go; isolator spawn -n N", len(resp.INS))
	} else {
		d.ok("%d of %d INS running", up, len(resp.INS))
	}
	resp, err = c.Call(ctx, api.Request{Op: api.OpUplinkList})
	if err != nil {
		d.fail("isolator uplink ls through %s: %v", apiPath, err)
		return
	}
	if len(resp.Uplinks) == 0 {
		d.fail("no uplinks configured: the INS have no network (uplinks: in the configuration, or isolator uplink add)")
	}
	for _, u := range resp.Uplinks {
		if u.State == "up" {
			d.ok("uplink %s (%s) up in %d of %d INS", u.Name, u.Interface, u.INSUp, u.INS)
			continue
		}
		d.fail("uplink %s (%s) is %s (carrier %v, up in %d of %d INS)", u.Name, u.Interface, u.State, u.Carrier, u.INSUp, u.INS)
	}
}

// program says whether the shim can be preloaded into name.
func (d *doctor) program(name string) {
	path, err := exec.LookPath(name)
	if err != nil {
		d.fail("%s: %v", name, err)
		return
	}
	for range 4 { // a script's interpreter may itself be a script
		info, err := binkind.Inspect(path)
		if err != nil {
			d.fail("%s: %v", path, err)
			return
		}
		if info.Kind == binkind.Script {
			d.ok("%s is %s", path, info.Explain())
			if !filepath.IsAbs(info.Interp) {
				return
			}
			path = info.Interp
			continue
		}
		if info.Interposable() {
			d.ok("%s is %s", path, info.Explain())
		} else {
			d.fail("%s is %s", path, info.Explain())
		}
		return
	}
	d.fail("%s: too many nested #! interpreters", name)
}
