package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/ins/tune"
)

func tuneCmd(d dialer) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "tune INS|all [key=value...]",
		Short: "Tune the TCP of one INS or of all (present and future); without settings, show them",
		Long: `Tune the netstack of INS (an id from isolator ls) or of all INS, including
ones spawned later (settings for all are kept across restarts; a single INS's
settings override them while it lives). Each request is answered applied or
refused with the reason; value "default" removes a setting. Keys:

  rcvbuf, rcvbuf-max   TCP receive buffer of new connections and its maximum
                       (bytes, K/M suffixes; moderation grows up to the max)
  sndbuf, sndbuf-max   the same for the send buffer
  backlog              cap on every listen backlog (1..65535; live listeners
                       are re-capped)
  max-conn-per-src     concurrent accepted connections per source address, per
                       INS (0: no limit); one over the limit is reset at accept
  syn-cookies          always | auto (auto: only when a SYN queue overflows)

  isolator tune all max-conn-per-src=100 syn-cookies=always
  isolator tune 3 rcvbuf=256K`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := d(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := c.Call(ctx, api.Request{Op: api.OpTune, Mitigation: &api.MitigationRequest{INS: args[0], Settings: args[1:]}})
			reply := resp.Mitigation
			if reply == nil {
				if err == nil {
					err = errors.New("the daemon sent no reply to tune (is it older than this CLI?)")
				}
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if jerr := enc.Encode(reply); jerr != nil {
					return jerr
				}
			}
			if err != nil {
				return errors.New(resp.Error)
			}
			if output == "json" {
				return nil
			}
			fmt.Println(reply.Summary)
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "INS\t"+strings.ToUpper(strings.Join(tune.Keys, "\t"))+"\tCONN-REFUSED")
			for _, r := range reply.INS {
				var vals []string
				for _, k := range tune.Keys {
					vals = append(vals, r.Tuning[k])
				}
				fmt.Fprintf(w, "%d\t%s\t%d\n", r.ID, strings.Join(vals, "\t"), r.ConnRefused)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}
