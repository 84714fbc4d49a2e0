// Command isolator runs the isolator daemon and manages a running one: it
// spawns, lists and kills INS processes and adds, removes and lists uplinks. The same binary,
// run as `isolator ins` by the daemon, is an INS process.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mpshim/mpshim/internal/units"
	"github.com/mpshim/mpshim/isolator"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ins"
)

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "isolator:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var apiPath string
	root := &cobra.Command{
		Use:           "isolator",
		Short:         "Serve apps' sockets from isolated user-space network stacks (INS)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&apiPath, "api", config.DefaultAPI, "the daemon's API socket")
	client := func(ctx context.Context) (*api.Client, error) { return api.Dial(ctx, apiPath) }
	root.AddCommand(runCmd(), insCmd(), spawnCmd(client), lsCmd(client), killCmd(client), uplinkCmd(client))
	root.AddCommand(tuneCmd(client), splitCmd(), peerCmd(client), lbCmd(client))
	return root
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func runCmd() *cobra.Command {
	var (
		file, logLevel string
		pprofAddr      string
		socketMode     string
		uplinks        []string
		vips           []string
		remotes        []string
		allowUIDs      []uint
		allowGIDs      []uint
		c              = config.Default()
		monitor        = newMonitorFlags()
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon in the foreground",
		Long: `Run the isolator daemon in the foreground until SIGINT or SIGTERM.

Configuration comes from --config (YAML) with flags layered on top. Each uplink
is a host interface whose macvlan children become the INS NICs, e.g.

  isolator run --uplink up0=eth1,pool4=10.77.0.10/24,gw4=10.77.0.1,weight=2

With split_key, peers, split and expose in the file (the keys of "isolator
split run --help", split_key and split_status for key and status) the daemon
also runs the split tunnel gateway, and connections that apps under the shim
make to a split prefix are carried through the peer.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				fc, err := config.Load(file)
				if err != nil {
					return err
				}
				// Flags given on the command line override the file.
				fl := cmd.Flags()
				for _, name := range []string{"ins", "policy", "socket", "socket-group", "netns", "max-ins", "state-dir", "dns", "dns-timeout", "orphan-timeout", "autoscale"} {
					if !fl.Changed(name) {
						continue
					}
					switch name {
					case "ins":
						fc.INS = c.INS
					case "policy":
						fc.Policy = c.Policy
					case "socket":
						fc.Socket = c.Socket
					case "socket-group":
						fc.SocketGroup = c.SocketGroup
					case "netns":
						fc.NetNS = c.NetNS
					case "max-ins":
						fc.MaxINS = c.MaxINS
					case "state-dir":
						fc.StateDir = c.StateDir
					case "dns":
						fc.DNS = c.DNS
					case "dns-timeout":
						fc.DNSTimeout = c.DNSTimeout
					case "orphan-timeout":
						fc.OrphanTimeout = c.OrphanTimeout
					case "autoscale":
						fc.Autoscale = c.Autoscale
					}
				}
				if fl.Changed("api") {
					fc.API, _ = cmd.Flags().GetString("api")
				}
				c = fc
			} else {
				c.API, _ = cmd.Flags().GetString("api")
			}
			if socketMode != "" {
				var m uint32
				if _, err := fmt.Sscanf(socketMode, "%o", &m); err != nil || m > 0o777 {
					return fmt.Errorf("--socket-mode %q: want an octal permission such as 0660", socketMode)
				}
				c.SocketMode = config.Mode(m)
			}
			monitor.apply(cmd.Flags(), &c)
			for _, s := range uplinks {
				u, err := config.ParseUplinkFlag(s)
				if err != nil {
					return err
				}
				c.Uplinks = append(c.Uplinks, u)
			}
			if err := applyVIPs(&c, vips); err != nil {
				return err
			}
			if err := applyRemotes(&c, remotes); err != nil {
				return err
			}
			for _, u := range allowUIDs {
				c.AllowUIDs = append(c.AllowUIDs, uint32(u))
			}
			for _, g := range allowGIDs {
				c.AllowGIDs = append(c.AllowGIDs, uint32(g))
			}
			log := newLogger(logLevel)
			d, err := isolator.New(c, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if pprofAddr != "" {
				go func() {
					if err := d.ServeDebug(ctx, pprofAddr); err != nil {
						log.Error("profiles", "err", err)
					}
				}()
			}
			return d.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "config", "c", "", "YAML configuration file")
	f.StringArrayVar(&uplinks, "uplink", nil, "uplink NAME=IFACE,pool4=ADDR/LEN[,gw4=ADDR][,pool6=ADDR/LEN,gw6=ADDR][,weight=N][,backend=packet|xdp][,gso=on|off][,vip=ADDR]...[,tunnel4=ADDR][,gue=PORT] (repeatable)")
	f.StringArrayVar(&vips, "vip", nil, "UPLINK=ADDR: a service address (IPv4 or IPv6) every INS holds on that uplink, balanced over them by an XDP program on its interface (repeatable)")
	f.StringArrayVar(&remotes, "remote", nil, "UPLINK=NAME,ADDR[,WEIGHT]: another isolator host whose INS serve the uplink's VIPs too, reached in IP-in-IP to its tunnel4 ADDR, or in GUE with the uplink's gue=PORT (the uplink needs tunnel4=, this host's address on it; repeatable)")
	f.StringVar(&c.Autoscale, "autoscale", c.Autoscale, "grow and shrink the INS behind the VIPs by load: min=1,max=20,conns=1000,cpu=0.8,sustain=5s,cooldown=15s,headroom=0.6,drain=30s (missing keys take these values)")
	f.IntVar(&c.INS, "ins", c.INS, "INS processes to start with")
	f.IntVar(&c.MaxINS, "max-ins", c.MaxINS, "most INS processes allowed")
	f.StringVar(&c.Policy, "policy", c.Policy, "outbound uplink policy: wrr, rtt or hash")
	f.StringVar(&c.Socket, "socket", c.Socket, "app registration socket")
	f.StringVar(&socketMode, "socket-mode", "", "permission of the registration socket, octal (default 0600); processes that drop privileges re-register through it after a daemon restart")
	f.StringVar(&c.SocketGroup, "socket-group", c.SocketGroup, "group (name or gid) of the registration socket")
	f.StringVar(&c.NetNS, "netns", c.NetNS, "network namespace of the uplink interfaces (default: the daemon's)")
	f.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory of the state kept across restarts (mitigation rules, the running INS a restarted daemon adopts)")
	f.StringArrayVar(&c.DNS, "dns", nil, "nameserver the INS resolve the apps' host names with: ADDR or ADDR:PORT (repeatable, asked in order)")
	f.DurationVar(&c.DNSTimeout, "dns-timeout", 0, "timeout of one query to one nameserver (default 2s; two rounds over the nameservers)")
	f.DurationVar(&c.OrphanTimeout, "orphan-timeout", 0, "how long an INS whose daemon died serves on, waiting for a restarted daemon to adopt it, before it exits (default 15m)")
	f.UintSliceVar(&allowUIDs, "allow-uid", nil, "uids allowed to register apps (default: the daemon's own)")
	f.UintSliceVar(&allowGIDs, "allow-gid", nil, "gids allowed to register apps")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	monitor.register(f)
	f.StringVar(&pprofAddr, "pprof", "", "serve Go profiles of the daemon and its INS over HTTP on ADDR (e.g. 127.0.0.1:6060; off by default)")
	return cmd
}

func insCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "ins",
		Short:  "Run as an INS process (started by the daemon)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctrl := os.NewFile(3, "ctrl")
			if ctrl == nil {
				return fmt.Errorf("ins: no control channel on fd 3 (this command is run by the daemon)")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			// ins.Output keeps the lines written while no daemon reads
			// them, for the successor.
			log := slog.New(slog.NewTextHandler(ins.Output, &slog.HandlerOptions{Level: slog.LevelInfo}))
			return ins.RunProcess(ctx, ctrl, log)
		},
	}
}

type dialer func(context.Context) (*api.Client, error)

func call(d dialer, req api.Request) (api.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := d(ctx)
	if err != nil {
		return api.Response{}, err
	}
	defer c.Close()
	return c.Call(ctx, req)
}

func spawnCmd(d dialer) *cobra.Command {
	var n int
	cmd := &cobra.Command{
		Use:   "spawn -n N",
		Short: "Add N INS processes to the running daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(d, api.Request{Op: api.OpSpawn, N: n})
			if err != nil {
				return err
			}
			for _, i := range resp.INS {
				fmt.Printf("spawned INS %d (pid %d)\n", i.ID, i.PID)
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 1, "number of INS to add")
	return cmd
}

func lsCmd(d dialer) *cobra.Command {
	var output string
	var gc bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the INS processes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			resp, err := call(d, api.Request{Op: api.OpList, GC: gc})
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if resp.INS == nil {
					resp.INS = []api.INSInfo{}
				}
				return enc.Encode(resp.INS)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tPID\tSTATE\tUPLINKS\tSOCKETS\tCONNS\tRSS\tRX\tTX\tRESTARTS\tLAST EXIT")
			for _, i := range resp.INS {
				var ups []string
				for _, u := range i.Uplinks {
					ups = append(ups, u.Name+"="+u.Addr4)
				}
				last := "-"
				if i.LastExit != "" {
					last = fmt.Sprintf("%s (%s ago)", i.LastExit, time.Since(i.LastExitAt).Round(time.Second))
				}
				fmt.Fprintf(w, "%d\t%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%d\t%s\n", i.ID, i.PID, i.State, strings.Join(ups, ","),
					i.Sockets, i.Connections, size(i.RSS), size(i.RxBytes), size(i.TxBytes), i.Restarts, last)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd.Flags().BoolVar(&gc, "gc", false, "have the daemon and every INS collect garbage and return freed memory first, so RSS shows what is live (a leak check)")
	return cmd
}

func killCmd(d dialer) *cobra.Command {
	return &cobra.Command{
		Use:   "kill ID",
		Short: "Stop one INS process",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.Atoi(args[0])
			if err != nil {
				return fmt.Errorf("INS id %q: want a number from `isolator ls`", args[0])
			}
			_, err = call(d, api.Request{Op: api.OpKill, ID: id})
			return err
		},
	}
}

// size formats a byte count for the tables.
func size(b uint64) string { return units.Bytes(float64(b)) }
