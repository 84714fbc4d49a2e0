package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
)

const uplinkSyntax = "NAME=IFACE,pool4=ADDR/LEN[,gw4=ADDR][,pool6=ADDR/LEN[,gw6=ADDR]][,weight=N]"

func uplinkCmd(d dialer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "uplink",
		Short: "Add, remove and list the uplinks of the running daemon",
		Long: `Add, remove and list the uplinks of the running daemon.

Every INS has a NIC (a macvlan child of the uplink's host interface, in its own
network namespace) with its own address on every uplink.`,
	}
	cmd.AddCommand(uplinkAddCmd(d), uplinkDelCmd(d), uplinkLsCmd(d))
	return cmd
}

func checkOutput(o string) error {
	if o != "table" && o != "json" {
		return fmt.Errorf("-o %q: want table or json", o)
	}
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printResults shows what an uplink change did on each INS.
func printResults(ch *api.UplinkChange, withCut bool) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	head := "INS\tRESULT\tADDR4\tADDR6"
	if withCut {
		head += "\tCUT"
	}
	fmt.Fprintln(w, head)
	for _, r := range ch.Results {
		res := "ok"
		if !r.OK {
			res = "failed: " + r.Error
		}
		line := fmt.Sprintf("%d\t%s\t%s\t%s", r.INS, res, dash(r.Addr4), dash(r.Addr6))
		if withCut {
			line += fmt.Sprintf("\t%d", r.Conns)
		}
		fmt.Fprintln(w, line)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func failedINS(ch *api.UplinkChange) int {
	n := 0
	for _, r := range ch.Results {
		if !r.OK {
			n++
		}
	}
	return n
}

func uplinkAddCmd(d dialer) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "add " + uplinkSyntax,
		Short: "Add an uplink to every running INS and to every INS spawned later",
		Long: `Add an uplink to the running daemon. Every running INS gets a macvlan of the
interface in its namespace, the next free address of the pools and a NIC on it
that takes new flows at once; INS spawned later get it too.

The argument has the syntax of "isolator run --uplink". pool4 is the first
address handed to an INS with the subnet's prefix length; gw4 the next hop.

It is refused, changing nothing, when the name is taken, a pool overlaps
another uplink's, the interface does not exist in the uplinks' namespace, or
no INS could take the uplink. The reply lists the outcome on every INS.`,
		Example: `  isolator uplink add up2=eth3,pool4=10.77.2.10/24,gw4=10.77.2.1
  isolator uplink add lte=wwan0,pool4=192.168.8.20/24,gw4=192.168.8.1,weight=1`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("want one uplink, %s (see --help)", uplinkSyntax)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			u, err := config.ParseUplinkFlag(args[0])
			if err != nil {
				return err
			}
			if err := u.Validate(); err != nil {
				return err
			}
			resp, err := call(d, api.Request{Op: api.OpUplinkAdd, Uplink: &u})
			ch := resp.Change
			if output == "json" && ch != nil {
				if perr := printJSON(ch); perr != nil {
					return perr
				}
			} else if ch != nil {
				if err == nil {
					fmt.Printf("uplink %s added on %d of %d INS\n", ch.Name, len(ch.Results)-failedINS(ch), len(ch.Results))
				}
				if perr := printResults(ch, false); perr != nil {
					return perr
				}
			}
			if err != nil {
				return err
			}
			if n := failedINS(ch); n > 0 {
				return fmt.Errorf("uplink %s is missing on %d INS (see above); remove it with `isolator uplink del %s` or kill those INS", ch.Name, n, ch.Name)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func uplinkDelCmd(d dialer) *cobra.Command {
	var (
		output  string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "del NAME",
		Short: "Drain an uplink, then remove it from every INS",
		Long: `Remove an uplink from the running daemon. At once no INS places a new outbound
flow on it and new INS no longer get it; connections already on it keep running
until they end or --timeout passes. Then every INS loses the NIC (connections
still on it are cut), the macvlans are deleted and the addresses go back to the
pool. The command waits for all of this and reports whether the uplink drained
and, per INS, how many connections were cut.

The last uplink cannot be removed: add another one first.`,
		Example: `  isolator uplink del up2
  isolator uplink del up2 --timeout 2m`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("want the name of one uplink (see `isolator uplink ls`)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if timeout <= 0 || timeout > 24*time.Hour {
				return fmt.Errorf("--timeout %v: want more than 0 and at most 24h", timeout)
			}
			if output == "table" {
				fmt.Fprintf(os.Stderr, "draining uplink %s (up to %v)…\n", args[0], timeout)
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout+2*time.Minute)
			defer cancel()
			c, err := d(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := c.Call(ctx, api.Request{Op: api.OpUplinkDel, Name: args[0], TimeoutMS: timeout.Milliseconds()})
			if err != nil {
				return err
			}
			ch := resp.Change
			if ch == nil {
				return fmt.Errorf("uplink-del: the daemon sent no report")
			}
			if output == "json" {
				return printJSON(ch)
			}
			waited := (time.Duration(ch.WaitedMS) * time.Millisecond).Round(10 * time.Millisecond)
			if ch.Drained {
				fmt.Printf("uplink %s removed from %d INS: drained after %v\n", ch.Name, len(ch.Results), waited)
			} else {
				cut := 0
				for _, r := range ch.Results {
					cut += r.Conns
				}
				fmt.Printf("uplink %s removed from %d INS: not drained after %v, %d connections cut\n", ch.Name, len(ch.Results), waited, cut)
			}
			if err := printResults(ch, true); err != nil {
				return err
			}
			if n := failedINS(ch); n > 0 {
				return fmt.Errorf("uplink %s: removal failed on %d INS (see above)", ch.Name, n)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd.Flags().DurationVar(&timeout, "timeout", api.DefaultDrainTimeout, "longest wait for the connections on the uplink to end")
	return cmd
}

func uplinkLsCmd(d dialer) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the uplinks with their state and counters",
		Long: `List the uplinks of the running daemon. STATE is up, down (the interface has
no carrier, or every INS finds the uplink dead) or draining (being removed).
INS counts the INS with a NIC on the uplink and, of those, how many place new
flows on it; CONNS, RX and TX are summed over the INS.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			resp, err := call(d, api.Request{Op: api.OpUplinkList})
			if err != nil {
				return err
			}
			if output == "json" {
				if resp.Uplinks == nil {
					resp.Uplinks = []api.UplinkInfo{}
				}
				return printJSON(resp.Uplinks)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tINTERFACE\tPOOL4\tGATEWAY4\tPOOL6\tWEIGHT\tSTATE\tCARRIER\tINS\tCONNS\tRX\tTX")
			for _, u := range resp.Uplinks {
				carrier := "yes"
				if !u.Carrier {
					carrier = "no"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d/%d\t%d\t%s\t%s\n", u.Name, u.Interface, dash(u.Pool4), dash(u.Gateway4),
					dash(u.Pool6), u.Weight, u.State, carrier, u.INSUp, u.INS, u.Conns, size(u.RxBytes), size(u.TxBytes))
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
