package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/isolator/split/gateway"
	"github.com/mpshim/mpshim/isolator/split/seal"
)

func splitCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "split",
		Short: "Run the split tunnel between this isolator and its peers",
		Long: `The split tunnel carries TCP connections to destinations behind a peer
isolator as streams of one encrypted session whose packets are striped over
every path (one UDP subflow per uplink pair), with loss recovery and
failover. See "isolator split run --help" for the configuration.`,
	}
	cmd.AddCommand(splitKeygenCmd(), splitRunCmd())
	return cmd
}

func splitKeygenCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen --out FILE",
		Short: "Make a key pair: the private key goes to FILE (mode 0600), the public key to stdout",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out FILE is required")
			}
			if _, err := os.Stat(out); err == nil {
				return fmt.Errorf("%s exists; not overwritten", out)
			}
			kp, err := seal.GenerateKeyPair()
			if err != nil {
				return err
			}
			if err := gateway.WriteKey(out, kp); err != nil {
				return err
			}
			fmt.Println(kp.Public)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file for the private key")
	return cmd
}

func splitRunCmd() *cobra.Command {
	var (
		file, logLevel, user string
		emptyRoot            bool
	)
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the split tunnel gateway in the foreground",
		Long: `Run the split tunnel gateway until SIGINT or SIGTERM. The YAML file says

  key: /etc/mpshim/split.key          # this isolator's private key (split keygen)
  status: /run/mpshim/split.sock      # for "isolator peer ls" (the default)
  peers:
    - name: b
      key: BASE64-PUBLIC-KEY-OF-B
      paths:                          # one per uplink pair, same order on both sides
        - {local: 10.77.0.1:7000, endpoint: 10.77.0.2:7000}
        - {local: 10.77.1.1:7000, endpoint: 10.77.1.2:7000}
  split:                              # connections to listen go to dst through the peer
    - {dst: 10.20.0.5:80, peer: b, listen: 127.0.0.1:8080}
  expose:                             # what each peer may reach through this side
    - {peer: b, dst: 10.30.0.0/16}

Of two peers, the one whose public key sorts first starts the handshake.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("--config FILE is required")
			}
			c, err := config.LoadSplit(file)
			if err != nil {
				return err
			}
			g, err := gateway.New(c, newLogger(logLevel))
			if err != nil {
				return err
			}
			if user != "" {
				var uid, gid int
				if n, err := fmt.Sscanf(user, "%d:%d", &uid, &gid); err != nil || n != 2 || uid <= 0 || gid <= 0 {
					return fmt.Errorf("--user %q: want UID:GID, neither 0", user)
				}
				g.Ready = func() error {
					// The descriptor limit stays what it is (an INS's is
					// raised for its connections; the gateway's needs are
					// those of the process that started it).
					var lim unix.Rlimit
					if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
						return fmt.Errorf("RLIMIT_NOFILE: %w", err)
					}
					return sandbox.Enter(sandbox.Options{NoFile: lim.Max, UID: uid, GID: gid, EmptyRoot: emptyRoot, Policy: sandbox.PolicyGateway})
				}
			} else if emptyRoot {
				return fmt.Errorf("--empty-root needs --user")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return g.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "YAML configuration file")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().StringVar(&user, "user", "", "UID:GID to run as once the key is read and the sockets are open, without capabilities, with no_new_privs and under the gateway's seccomp allow-list (the daemon passes its INS user)")
	cmd.Flags().BoolVar(&emptyRoot, "empty-root", false, "with --user, also pivot into an empty read-only root; the process must be pid 1 of its own pid and mount namespaces (the daemon starts it so)")
	return cmd
}

func peerCmd(d dialer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "peer",
		Short: "Show the split tunnel's peers, or join one to the running daemon",
	}
	cmd.AddCommand(peerLsCmd(), peerAddCmd(d))
	return cmd
}

func peerAddCmd(d dialer) *cobra.Command {
	return &cobra.Command{
		Use:   "add NAME key=BASE64,local=ADDR:PORT,endpoint=ADDR:PORT[,local=…,endpoint=…][,split=PREFIX][,expose=PREFIX]",
		Short: "Join another isolator to the running daemon's split tunnel",
		Long: `Join a peer to the split gateway of the running daemon (one whose
configuration has split_key). key is the peer's public key; each local and
endpoint pair is one path (the n-th local goes with the n-th endpoint): this
site's UDP address on one uplink and the peer's on the other end, listed in the
same order on both sites. Connections that apps under the shim make to an address
inside a split prefix are carried through the peer; the peer may reach the
destinations inside an expose prefix through this site. The peer stays until the
daemon stops; "isolator peer ls" shows it.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, split, expose, err := config.ParsePeerFlag(args[0], args[1])
			if err != nil {
				return err
			}
			if _, err := call(d, api.Request{Op: api.OpPeerAdd, PeerAdd: &api.PeerAddRequest{Peer: p, Split: split, Expose: expose}}); err != nil {
				return err
			}
			fmt.Printf("peer %s added: %d paths\n", p.Name, len(p.Paths))
			return nil
		},
	}
}

func peerLsCmd() *cobra.Command {
	var status, output string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the peers of the split tunnel gateway and, per path, its state and measurements",
		Long: `List the peers of a running "isolator split run". Per path: STATE (up or
down: silent for 300 ms while another path was heard from), SRTT and MINRTT,
RATE (delivery-rate estimate), LOSS (frames lost over frames sent), SHARE (the
path's part of the stream bytes sent) and RESENT (frames lost there and sent
again on another path).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			st, err := gateway.ReadStatus(ctx, status)
			if err != nil {
				return err
			}
			if output == "json" {
				if st == nil {
					st = []gateway.PeerStatus{}
				}
				return printJSON(st)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PEER\tSESSION\tSTREAMS\tPATH\tLINK\tSTATE\tSRTT\tMINRTT\tRATE\tLOSS\tSHARE\tRESENT")
			for _, p := range st {
				state := "down"
				if p.Up {
					state = "up " + time.Since(p.Since).Round(time.Second).String()
				}
				if len(p.Paths) == 0 {
					fmt.Fprintf(w, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\n", p.Name, state)
				}
				for i, ps := range p.Paths {
					pstate := "down"
					if ps.Up {
						pstate = "up"
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\t%v\t%v\t%.1f Mbit/s\t%.2f%%\t%.0f%%\t%d\n", p.Name, state, p.Streams, i, ps.Link, pstate,
						ps.SRTT.Round(100*time.Microsecond), ps.MinRTT.Round(100*time.Microsecond), ps.RateMbit, 100*ps.Loss, 100*ps.Share, ps.Resent)
				}
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&status, "status", config.DefaultSplitStatus, "the gateway's status socket")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
