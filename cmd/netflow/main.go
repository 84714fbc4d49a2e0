// Command netflow watches and acts on the flows of a running isolator: it
// talks to the daemon's API socket.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
)

// extraCommands are added to the root command; each file of commands
// appends its own in init.
var extraCommands []func(dial func(context.Context) (*api.Client, error)) *cobra.Command

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "netflow:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var apiPath string
	root := &cobra.Command{
		Use:           "netflow",
		Short:         "Watch and mitigate the flows of the isolator's INS",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&apiPath, "api", config.DefaultAPI, "the daemon's API socket")
	dial := func(ctx context.Context) (*api.Client, error) { return api.Dial(ctx, apiPath) }
	for _, mk := range extraCommands {
		root.AddCommand(mk(dial))
	}
	return root
}
