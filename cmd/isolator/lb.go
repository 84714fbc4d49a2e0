package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
)

// applyVIPs adds each --vip UPLINK=ADDR to the named uplink of c.
func applyVIPs(c *config.Config, vips []string) error {
	for _, s := range vips {
		name, addr, ok := strings.Cut(s, "=")
		if !ok || name == "" || addr == "" {
			return fmt.Errorf("--vip %q: want UPLINK=ADDR", s)
		}
		i := -1
		for k := range c.Uplinks {
			if c.Uplinks[k].Name == name {
				i = k
			}
		}
		if i < 0 {
			return fmt.Errorf("--vip %q: no uplink named %q (--uplink or the configuration file)", s, name)
		}
		c.Uplinks[i].VIPs = append(c.Uplinks[i].VIPs, addr)
	}
	return nil
}

// applyRemotes adds each --remote UPLINK=NAME,ADDR[,WEIGHT] to the named
// uplink of c.
func applyRemotes(c *config.Config, remotes []string) error {
	for _, s := range remotes {
		name, rest, ok := strings.Cut(s, "=")
		f := strings.Split(rest, ",")
		if !ok || name == "" || len(f) < 2 || len(f) > 3 {
			return fmt.Errorf("--remote %q: want UPLINK=NAME,ADDR[,WEIGHT]", s)
		}
		r := config.Remote{Name: f[0], Tunnel4: f[1]}
		if len(f) == 3 {
			w, err := strconv.Atoi(f[2])
			if err != nil || w < 1 {
				return fmt.Errorf("--remote %q: weight %q: want a number ≥ 1", s, f[2])
			}
			r.Weight = w
		}
		i := slices.IndexFunc(c.Uplinks, func(u config.Uplink) bool { return u.Name == name })
		if i < 0 {
			return fmt.Errorf("--remote %q: no uplink named %q (--uplink or the configuration file)", s, name)
		}
		c.Uplinks[i].Remotes = append(c.Uplinks[i].Remotes, r)
	}
	return nil
}

func lbCmd(d dialer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lb",
		Short: "Show and steer the load balancer of the uplinks' VIPs",
	}
	var output string
	status := &cobra.Command{
		Use:   "status",
		Short: "Per INS behind each VIP: weight, table share, connections, new flows/s, state; autoscale decisions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			resp, err := call(d, api.Request{Op: api.OpLBStatus})
			if err != nil {
				return err
			}
			st := resp.LB
			if st == nil {
				st = &api.LBStatus{Uplinks: []api.LBUplink{}}
			}
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			if len(st.Uplinks) == 0 {
				fmt.Println("no uplink has VIPs")
			}
			for _, u := range st.Uplinks {
				fmt.Printf("uplink %s on %s, VIPs %s: %d established and %d new flows in the tables\n",
					u.Name, u.Interface, strings.Join(u.VIPs, " "), u.Established, u.New)
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "  ID\tSTATE\tWEIGHT\tSHARE\tCONNS\tFLOWS\tNEW FLOWS/S\tNEW FLOWS\tMAC\tREMOTE")
				for _, m := range u.Members {
					remote := "-"
					if m.Remote != "" {
						remote = m.Name + " via " + m.Remote
					}
					conns := "-"
					if m.Connections >= 0 {
						conns = strconv.Itoa(m.Connections)
					}
					fmt.Fprintf(w, "  %d\t%s\t%d\t%.1f%%\t%s\t%d\t%.1f\t%d\t%s\t%s\n", m.ID, m.State, m.Weight, 100*m.Share,
						conns, m.Flows, m.NewFlowsPerSec, m.NewFlows, m.MAC, remote)
				}
				if err := w.Flush(); err != nil {
					return err
				}
			}
			if st.Autoscale != "" {
				fmt.Printf("autoscale %s\n", st.Autoscale)
				for _, x := range st.Decisions {
					ins := ""
					if len(x.INS) > 0 {
						ins = fmt.Sprintf(" INS %v", x.INS)
					}
					fmt.Printf("  %s %s%s: %s\n", x.At.Format("15:04:05"), x.Action, ins, x.Reason)
				}
			}
			return nil
		},
	}
	status.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	id := func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, fmt.Errorf("INS id %q: want a number from `isolator lb status`", s)
		}
		return n, nil
	}
	weight := &cobra.Command{
		Use:   "weight ID N",
		Short: "Set an INS's weight (its relative share of new flows)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			i, err := id(args[0])
			if err != nil {
				return err
			}
			w, err := strconv.Atoi(args[1])
			if err != nil {
				return fmt.Errorf("weight %q: want a number ≥ 1", args[1])
			}
			_, err = call(d, api.Request{Op: api.OpLBWeight, ID: i, N: w})
			return err
		},
	}
	simple := func(use, short, op string) *cobra.Command {
		return &cobra.Command{
			Use:   use + " ID",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				i, err := id(args[0])
				if err != nil {
					return err
				}
				_, err = call(d, api.Request{Op: op, ID: i})
				return err
			},
		}
	}
	cmd.AddCommand(status, weight,
		simple("drain", "Give an INS no new flows; its connections stay", api.OpLBDrain),
		simple("undrain", "Give a draining INS new flows again", api.OpLBUndrain))
	return cmd
}
