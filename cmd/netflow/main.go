// Command netflow shows the flows of a running isolator: `netflow watch` is
// a live view (or a JSON-lines stream, or the replay of one), `netflow ls`
// a one-shot table. It talks to the isolator's API on its unix socket or,
// remotely, over TLS with a token.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/split/gateway"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/query"
	"github.com/mpshim/mpshim/netflow/watch"
)

// extraCommands are more subcommands, added by other files of this
// package in init(); each gets the function that connects to the API.
var extraCommands []func(dial func(context.Context) (*api.Client, error)) *cobra.Command

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "netflow:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var target api.Target
	root := &cobra.Command{
		Use:   "netflow",
		Short: "Watch, export and act on the flows of the isolator's INS",
		Long: `netflow shows every flow the isolator's INS carry and acts on them.

The isolator's API is its unix socket (--api PATH, default ` + config.DefaultAPI + `)
or, when it runs with --api-listen, tls://HOST:PORT with --api-token-file and
--api-pin (the sha256 fingerprint the isolator logs at start).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&target.Addr, "api", config.DefaultAPI, "the isolator's API: a unix socket path or tls://HOST:PORT")
	pf.StringVar(&target.TokenFile, "api-token-file", "", "file holding the remote API token")
	pf.StringVar(&target.Pin, "api-pin", "", "sha256 fingerprint of the remote API's certificate")
	dial := func(ctx context.Context) (*api.Client, error) { return target.Dial(ctx) }
	root.AddCommand(watchCmd(dial), lsCmd(dial))
	for _, mk := range extraCommands {
		root.AddCommand(mk(dial))
	}
	return root
}

type dialer = func(context.Context) (*api.Client, error)

// filterFlags are the hubble-style filters: each flag adds a term, in
// command-line order, and --not negates the next one.
type filterFlags struct {
	terms  []string
	negate bool
}

type termValue struct {
	ff   *filterFlags
	kind string
}

func (v *termValue) String() string { return "" }
func (v *termValue) Type() string   { return "string" }
func (v *termValue) Set(s string) error {
	t := v.kind + "=" + s
	if v.ff.negate {
		t = "!" + t
		v.ff.negate = false
	}
	v.ff.terms = append(v.ff.terms, t)
	return nil
}

type notValue struct{ ff *filterFlags }

func (v *notValue) String() string   { return "false" }
func (v *notValue) Type() string     { return "bool" }
func (v *notValue) IsBoolFlag() bool { return true }
func (v *notValue) Set(s string) error {
	if s != "true" {
		return fmt.Errorf("--not takes no value")
	}
	v.ff.negate = true
	return nil
}

func (ff *filterFlags) register(f *pflag.FlagSet) {
	for _, k := range []struct{ name, kind, help string }{
		{"src", query.KindSrc, "flows started from this address or CIDR"},
		{"dst", query.KindDst, "flows to this address or CIDR"},
		{"ip", query.KindIP, "flows with either end in this address or CIDR"},
		{"port", query.KindPort, "flows with either port N or in N-M"},
		{"proto", query.KindProto, "flows of this protocol: tcp, udp, icmp, icmpv6 or a number"},
		{"tcp-flags", query.KindTCPFlags, "flows that saw all these TCP flags, e.g. SYN or SYN,RST"},
		{"ins", query.KindINS, "flows of this INS"},
		{"uplink", query.KindUplink, "flows on this uplink"},
	} {
		f.Var(&termValue{ff: ff, kind: k.kind}, k.name, k.help+" (repeatable: any of them)")
	}
	f.Var(&notValue{ff: ff}, "not", "negate the next filter: hide the flows it matches")
	f.Lookup("not").NoOptDefVal = "true"
}

// filter checks the terms and returns them parsed.
func (ff *filterFlags) filter() (*query.Filter, error) {
	if ff.negate {
		return nil, errors.New("--not must be followed by a filter flag")
	}
	return query.ParseFilter(ff.terms)
}

type viewFlags struct {
	output    string
	sort      string
	top       int
	aggregate string
}

func (vf *viewFlags) register(f *pflag.FlagSet, top int) {
	f.StringVarP(&vf.output, "output", "o", "table", "table or json (one JSON object per flow, per update)")
	f.StringVar(&vf.sort, "sort", query.ByRate, "order flows by rate, bytes or packets")
	f.IntVar(&vf.top, "top", top, "show this many flows or groups (0: all)")
	f.StringVar(&vf.aggregate, "aggregate-by", "", "show top talkers grouped by src, dst, port, ins or uplink")
}

func (vf *viewFlags) options() (watch.Options, error) {
	o := watch.Options{Sort: vf.sort, Top: vf.top, AggregateBy: vf.aggregate, Totals: true}
	if vf.output != "table" && vf.output != "json" {
		return o, fmt.Errorf("-o %q: want table or json", vf.output)
	}
	if vf.output == "json" && vf.aggregate != "" {
		return o, errors.New("--aggregate-by shows a table; -o json streams flows")
	}
	return o, o.Check()
}

func lsCmd(dial dialer) *cobra.Command {
	var ff filterFlags
	var vf viewFlags
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "Print the flows once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flt, err := ff.filter()
			if err != nil {
				return err
			}
			o, err := vf.options()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			c, err := dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			flows, _, err := watch.Fetch(ctx, c, flt.Terms(), 0)
			if err != nil {
				return err
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			defer w.Flush()
			if vf.output == "json" {
				query.SortFlows(flows, o.Sort)
				return watch.WriteJSON(w, flows)
			}
			return watch.Render(w, flows, o, time.Now())
		},
	}
	ff.register(cmd.Flags())
	vf.register(cmd.Flags(), 0)
	return cmd
}

func watchCmd(dial dialer) *cobra.Command {
	var (
		ff       filterFlags
		vf       viewFlags
		interval time.Duration
		input    string
		count    int
	)
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Watch the flows live",
		Long: `Watch the flows, refreshed every --interval: totals per uplink and per INS,
then the top flows by rate, bytes or packets, or the top talkers with
--aggregate-by, then the split tunnel (when the isolator has peers): per peer
its subflows (state, RTT, rate, loss, share) and the streams carried inside
its session. On a terminal the view is redrawn in place; otherwise a table
is printed per refresh.

-o json streams one JSON object per flow update instead, for jq and log
pipelines; --input-file replays such a stream ("-" for stdin) into the view.

Filters work like hubble observe's: each of --src, --dst, --ip, --port,
--proto, --tcp-flags, --ins and --uplink may repeat (any matches), different
ones must all match, and --not before a filter hides what it matches:

  netflow watch --proto tcp --not --port 22 --aggregate-by src`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flt, err := ff.filter()
			if err != nil {
				return err
			}
			o, err := vf.options()
			if err != nil {
				return err
			}
			if interval < 100*time.Millisecond {
				return fmt.Errorf("--interval %v: want at least 100ms", interval)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			out := newOutput(cmd.OutOrStdout(), vf.output == "json", o)
			defer out.flush()
			if input != "" {
				return replay(ctx, input, cmd.InOrStdin(), interval, flt, out, count)
			}
			return live(ctx, dial, interval, flt, out, count)
		},
	}
	ff.register(cmd.Flags())
	vf.register(cmd.Flags(), 20)
	f := cmd.Flags()
	f.DurationVar(&interval, "interval", time.Second, "refresh interval")
	f.StringVar(&input, "input-file", "", "replay a flow stream recorded with -o json (- for stdin) instead of asking the isolator")
	f.IntVar(&count, "count", 0, "stop after this many refreshes (0: until interrupted)")
	return cmd
}

// output draws frames or streams JSON.
type output struct {
	w     *bufio.Writer
	json  bool
	tty   bool
	opts  watch.Options
	view  *watch.View
	first bool
	// split is the split tunnel's state, shown under the flows.
	split []gateway.PeerStatus
}

func newOutput(w io.Writer, json bool, o watch.Options) *output {
	tty := false
	if f, ok := w.(*os.File); ok {
		_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		tty = err == nil
	}
	return &output{w: bufio.NewWriter(w), json: json, tty: tty, opts: o, view: watch.NewView(), first: true}
}

// update shows one interval's updates (already filtered).
func (o *output) update(at time.Time, updates []netflow.Flow) error {
	o.view.Apply(updates)
	if o.json {
		if err := watch.WriteJSON(o.w, updates); err != nil {
			return err
		}
		return o.w.Flush()
	}
	if o.tty {
		o.w.WriteString("\x1b[H\x1b[2J")
	} else if !o.first {
		o.w.WriteString("\n")
	}
	o.first = false
	if err := watch.Render(o.w, o.view.Flows(), o.opts, at); err != nil {
		return err
	}
	if err := watch.RenderSplit(o.w, o.split, at); err != nil {
		return err
	}
	return o.w.Flush()
}

func (o *output) flush() { o.w.Flush() }

func live(ctx context.Context, dial dialer, interval time.Duration, flt *query.Filter, out *output, count int) error {
	c, err := dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var since uint64
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := 0; count == 0 || n < count; n++ {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		updates, gen, err := watch.Fetch(fctx, c, flt.Terms(), since)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		since = gen
		if !out.json {
			// The split tunnel's subflows and streams; a daemon without a
			// split gateway has none, one whose gateway is restarting
			// shows none this time.
			fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			out.split, _ = watch.FetchSplit(fctx, c)
			cancel()
		}
		if err := out.update(time.Now(), updates); err != nil {
			return err
		}
		if count != 0 && n+1 == count {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	return nil
}

func replay(ctx context.Context, path string, stdin io.Reader, interval time.Duration, flt *query.Filter, out *output, count int) error {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	n := 0
	errStop := errors.New("stop")
	err := watch.Replay(r, interval, func(at time.Time, updates []netflow.Flow) error {
		if ctx.Err() != nil {
			return errStop
		}
		var keep []netflow.Flow
		for i := range updates {
			if flt.Match(&updates[i]) {
				keep = append(keep, updates[i])
			}
		}
		// On a terminal, frames follow at the recorded pace.
		if out.tty && !out.json && n > 0 {
			select {
			case <-ctx.Done():
				return errStop
			case <-time.After(interval):
			}
		}
		if err := out.update(at, keep); err != nil {
			return err
		}
		n++
		if count != 0 && n >= count {
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		return nil
	}
	if err != nil && strings.Contains(err.Error(), "flow stream") {
		return fmt.Errorf("%s: %w", path, err)
	}
	return err
}
