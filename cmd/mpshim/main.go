// Command mpshim runs a program under libmpshim.so, so that its sockets are
// served by the isolator's INS: `mpshim run [flags] -- CMD ARGS…` (or
// `mpshim CMD ARGS…`) checks that the isolator answers, sets LD_PRELOAD for
// CMD and everything it forks and execs, and execs CMD. `mpshim doctor
// [CMD]` says why something does not work.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Exit statuses of the launcher itself; once CMD runs, its own status is
// the launcher's (exec replaces the process).
const (
	exitUsage       = 2   // bad flags or arguments
	exitUnavailable = 69  // the isolator does not answer on its socket (EX_UNAVAILABLE)
	exitNoPerm      = 77  // the isolator refuses this uid/gid (EX_NOPERM)
	exitLauncher    = 125 // the launcher failed otherwise (no libmpshim.so, …)
	exitCannotExec  = 126 // CMD was found but could not be executed
	exitNotFound    = 127 // CMD was not found
)

// exitError carries the status the launcher exits with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitf(code int, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

// run executes the command line args and returns the exit status (it
// returns only when the launcher does not exec).
func run(args []string) int {
	root := rootCmd()
	root.SetArgs(shortForm(root, args))
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "mpshim:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitUsage
}

// shortForm turns `mpshim CMD ARGS…` into `mpshim run -- CMD ARGS…` when
// CMD is not one of mpshim's own commands or flags.
func shortForm(root *cobra.Command, args []string) []string {
	if len(args) == 0 || len(args[0]) == 0 || args[0][0] == '-' {
		return args
	}
	for _, c := range root.Commands() {
		if c.Name() == args[0] || c.HasAlias(args[0]) {
			return args
		}
	}
	if args[0] == "help" || args[0] == "completion" || args[0] == "__complete" || args[0] == "__completeNoDesc" {
		return args
	}
	return append([]string{"run", "--"}, args...)
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "mpshim [run flags] CMD [ARGS…] | mpshim run|doctor …",
		Short: "Run unmodified programs with their sockets served by the isolator",
		Long: `mpshim runs a program under libmpshim.so: its sockets, and those of every
process it forks and execs, are served by the isolator's network stacks.

  mpshim run [--socket PATH] [--loopback ins] [--fail open] -- CMD [ARGS…]
  mpshim CMD [ARGS…]            (the same, with the defaults)
  mpshim doctor [CMD]           (what works and what does not, and why)

Exit status: CMD's own once it runs; otherwise 69 when the isolator does not
answer on its registration socket, 77 when it does not allow this uid/gid (or
the socket's permissions keep this user out),
125 for other launcher failures (e.g. libmpshim.so not found), 126 when CMD
cannot be executed, 127 when it is not found, 2 for bad usage.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
	}
	root.AddCommand(runCmd(), doctorCmd())
	return root
}
