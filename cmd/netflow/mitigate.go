package main

// Mitigation commands: block, unblock, limit, unlimit, reset and rules.
// Each sends one request and prints the daemon's answer: applied (exit 0)
// or refused with the reason (exit 1).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mpshim/mpshim/internal/units"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/netflow/rules"
)

type dialFunc = func(context.Context) (*api.Client, error)

func init() {
	extraCommands = append(extraCommands, blockCmd, unblockCmd, limitCmd, unlimitCmd, resetCmd, rulesCmd)
}

// mitigate sends one mitigation request. The reply is printed as its
// summary, or as JSON with -o json; a refusal is returned as the error.
func mitigate(dial dialFunc, out io.Writer, output, op string, a api.MitigationRequest) (*api.MitigationReply, error) {
	if output != "text" && output != "json" {
		return nil, fmt.Errorf("-o %q: want text or json", output)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	resp, err := c.Call(ctx, api.Request{Op: op, Mitigation: &a})
	reply := resp.Mitigation
	if reply == nil {
		if err == nil {
			err = errors.New("the daemon sent no mitigation reply (is it older than this CLI?)")
		}
		return nil, err
	}
	if output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(reply); jerr != nil {
			return reply, jerr
		}
	} else if err == nil {
		fmt.Fprintln(out, reply.Summary)
	}
	if err != nil {
		// The error carries the reason (refused: ...).
		return reply, errors.New(resp.Error)
	}
	return reply, nil
}

func outputFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "output", "o", "text", "text or json")
}

func blockCmd(dial dialFunc) *cobra.Command {
	var reset bool
	var output string
	cmd := &cobra.Command{
		Use:   "block [--reset] PREFIX",
		Short: "Drop every packet from and to PREFIX in every INS",
		Long: `Drop every packet from and to PREFIX (10.0.0.0/8, 2001:db8::/32, or one address)
in every INS, present and future, before TCP sees it. New connections from the
prefix fail at once; with --reset, existing connections with peers in the
prefix are reset too (the peer gets a RST, the app a reset connection).
The rule is kept across restarts until unblock.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := mitigate(dial, cmd.OutOrStdout(), output, api.OpBlock, api.MitigationRequest{Prefix: args[0], Reset: reset})
			return err
		},
	}
	cmd.Flags().BoolVar(&reset, "reset", false, "also reset existing connections with peers in the prefix")
	outputFlag(cmd, &output)
	return cmd
}

func unblockCmd(dial dialFunc) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "unblock PREFIX",
		Short: "Remove the block rule for PREFIX",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := mitigate(dial, cmd.OutOrStdout(), output, api.OpUnblock, api.MitigationRequest{Prefix: args[0]})
			return err
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func limitCmd(dial dialFunc) *cobra.Command {
	var src, pps, bps, burst, output string
	cmd := &cobra.Command{
		Use:   "limit --src PREFIX (--pps N | --bps N) [--burst N]",
		Short: "Rate-limit packets from PREFIX in every INS",
		Long: `Rate-limit the packets every INS receives from PREFIX: at most --pps packets
or --bps bits (IP bytes × 8) per second, with one token bucket per INS for the
whole prefix. Packets over the rate are dropped before TCP sees them. Rates take
SI suffixes (10k, 2.5M, 1G). --burst is how many packets (--pps) or bytes
(--bps; K, M suffixes) may pass at once after an idle period; the default is a
tenth of a second's worth. When several limits cover a source, the most specific
prefix applies; a block rule always wins.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if src == "" {
				return errors.New("--src PREFIX is required")
			}
			a := api.MitigationRequest{Prefix: src}
			var err error
			switch {
			case (pps == "") == (bps == ""):
				return errors.New("give exactly one of --pps or --bps")
			case pps != "":
				if a.PPS, err = rules.ParseRate(pps); err != nil {
					return fmt.Errorf("--pps: %w", err)
				}
				if burst != "" {
					if a.Burst, err = rules.ParseRate(burst); err != nil {
						return fmt.Errorf("--burst: %w", err)
					}
				}
			default:
				if a.BPS, err = rules.ParseRate(bps); err != nil {
					return fmt.Errorf("--bps: %w", err)
				}
				if burst != "" {
					if a.Burst, err = rules.ParseSize(burst); err != nil {
						return fmt.Errorf("--burst: %w", err)
					}
				}
			}
			_, err = mitigate(dial, cmd.OutOrStdout(), output, api.OpLimit, a)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&src, "src", "", "source prefix to limit")
	f.StringVar(&pps, "pps", "", "packets per second")
	f.StringVar(&bps, "bps", "", "bits per second")
	f.StringVar(&burst, "burst", "", "burst: packets (with --pps) or bytes (with --bps)")
	outputFlag(cmd, &output)
	return cmd
}

func unlimitCmd(dial dialFunc) *cobra.Command {
	var src, output string
	cmd := &cobra.Command{
		Use:   "unlimit --src PREFIX",
		Short: "Remove the limit rule for PREFIX",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if src == "" {
				return errors.New("--src PREFIX is required")
			}
			_, err := mitigate(dial, cmd.OutOrStdout(), output, api.OpUnlimit, api.MitigationRequest{Prefix: src})
			return err
		},
	}
	cmd.Flags().StringVar(&src, "src", "", "source prefix of the limit")
	outputFlag(cmd, &output)
	return cmd
}

func resetCmd(dial dialFunc) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "reset FLOW-ID",
		Short: "Reset one TCP connection, named by its flow ID (from netflow ls)",
		Long: `Reset the TCP connection FLOW-ID ("<ins>-<12 hex digits>", as netflow ls and
netflow watch show it): the INS aborts it, the peer gets a RST and the app a
reset connection. The answer says whether it was reset or not found.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := mitigate(dial, cmd.OutOrStdout(), output, api.OpReset, api.MitigationRequest{Flow: args[0]})
			return err
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func rulesCmd(dial dialFunc) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "rules",
		Aliases: []string{"rule"},
		Short:   "List the mitigation rules with their counters (summed over the INS)",
		Long: `List the mitigation rules in order with the packets each matched and dropped,
summed over the running INS (counters start at zero in each INS and are lost
with it). -o json adds each INS's own counters.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listRules(dial, cmd.OutOrStdout(), output)
		},
	}
	outputFlag(cmd, &output)
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the rules (as netflow rules)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listRules(dial, cmd.OutOrStdout(), output)
		},
	}
	outputFlag(ls, &output)
	var rmOutput string
	rm := &cobra.Command{
		Use:   "rm ID",
		Short: "Remove the rule with this ID",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || id == 0 {
				return fmt.Errorf("rule id %q: want a number from `netflow rules`", args[0])
			}
			_, err = mitigate(dial, cmd.OutOrStdout(), rmOutput, api.OpRuleRemove, api.MitigationRequest{Rule: id})
			return err
		},
	}
	outputFlag(rm, &rmOutput)
	cmd.AddCommand(ls, rm)
	return cmd
}

func listRules(dial dialFunc, out io.Writer, output string) error {
	if output == "json" {
		_, err := mitigate(dial, out, output, api.OpRules, api.MitigationRequest{})
		return err
	}
	reply, err := mitigate(dial, io.Discard, output, api.OpRules, api.MitigationRequest{})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tACTION\tPREFIX\tRATE\tBURST\tPACKETS\tDROPS\tDROPPED\tCREATED")
	for _, r := range reply.Rules {
		rate, burst := "-", "-"
		switch {
		case r.PPS > 0:
			rate, burst = fmt.Sprintf("%d pps", r.PPS), strconv.FormatUint(r.EffectiveBurst(), 10)
		case r.BPS > 0:
			rate, burst = rules.FormatRate(r.BPS), strconv.FormatUint(r.EffectiveBurst(), 10)+" B"
		}
		created := "-"
		if !r.Created.IsZero() {
			created = r.Created.Local().Format(time.DateTime)
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", r.ID, r.Action, r.Prefix, rate, burst, r.Packets, r.Drops, units.Bytes(float64(r.DropBytes)), created)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out, reply.Summary)
	return nil
}
