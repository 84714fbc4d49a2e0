package isolator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
)

// insEnvPass lists the variables of the daemon's environment an INS
// inherits: the Go runtime's knobs and, for tests only, the sandbox probe.
// Nothing else of the daemon's environment (tokens, paths) reaches an INS.
var insEnvPass = []string{"GODEBUG", "GOTRACEBACK", "GOGC", "GOMEMLIMIT", "GOMAXPROCS", "GOCOVERDIR", sandbox.ProbeEnv}

// insEnv is the whole environment of an INS: its configuration and the
// variables of insEnvPass the daemon has.
func insEnv(config string) []string {
	env := []string{config}
	for _, k := range insEnvPass {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// insStdio gives cmd a standard input that is at end of file and a pipe
// for its standard output and error, and returns the reading end of that
// pipe and a function that closes the child's ends once it has started.
// No host file (not even /dev/null) is open in an INS.
func insStdio(cmd *exec.Cmd) (out *os.File, started func(), err error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("stdin pipe: %w", err)
	}
	inW.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		return nil, nil, fmt.Errorf("output pipe: %w", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, outW
	return outR, func() { inR.Close(); outW.Close() }, nil
}

// insOutput is where the INS's output lines go, each labelled with its id.
var (
	insOutputMu sync.Mutex
	insOutput   io.Writer = os.Stderr
)

// maxINSLine bounds one relayed line; the rest of a longer one is cut.
const maxINSLine = 4096

// relayINSOutput copies what INS id writes to its standard output and
// error into the daemon's log, line by line, each prefixed "ins[ID] " so
// that an INS cannot pass its lines off as the daemon's, with control
// characters replaced, until the INS closes the pipe; then it closes r.
func relayINSOutput(id int, r *os.File) { relayOutput("ins["+strconv.Itoa(id)+"] ", r) }

// relayOutput copies r to the daemon's log as relayINSOutput does, each
// line prefixed with prefix.
func relayOutput(prefix string, r *os.File) {
	defer r.Close()
	br := bufio.NewReaderSize(r, maxINSLine)
	skip := false // the rest of a line already cut
	for {
		line, err := br.ReadSlice('\n')
		full := len(line) > 0 && line[len(line)-1] == '\n'
		if len(line) > 0 && !skip {
			text := sanitizeLine(bytes.TrimRight(line, "\n"))
			if !full && errors.Is(err, bufio.ErrBufferFull) {
				text += " …(cut)"
			}
			insOutputMu.Lock()
			io.WriteString(insOutput, prefix+text+"\n")
			insOutputMu.Unlock()
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			skip = true
		case err != nil:
			return
		default:
			skip = false
		}
	}
}

// sanitizeLine replaces control characters (terminal escapes among them)
// and invalid UTF-8 with '?'.
func sanitizeLine(b []byte) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' {
			return r
		}
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return '?'
		}
		return r
	}, string(b))
}

// rss reads the INS's resident set size from /proc: a sealed INS has no
// /proc of its own to read it from.
func (p *insProc) rss() uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid()) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// insSysProcAttr is how every INS is started: with no parent-death
// signal, as it outlives a daemon that dies and waits for a successor
// (docs/design.md, "Survival"); in a process group of its own (a
// terminal's ^C goes to the daemon, which stops its INS in order); and in
// mount, pid, ipc and uts namespaces of its own (sandbox.Cloneflags),
// which the INS seals with an empty root.
func insSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Cloneflags: sandbox.Cloneflags}
}

// sandboxProbe answers the hidden API op sandbox-probe: every INS attempts
// the acts its sandbox forbids, among them reaching this daemon's API
// socket and its remote API, and reports how each ended. Refused unless
// sandbox.ProbeEnv was set when the daemon started.
func (d *Daemon) sandboxProbe(ctx context.Context) api.Response {
	if !sandbox.ProbeEnabled() {
		return api.Errorf("unknown operation %q", api.OpSandboxProbe)
	}
	target := &sandbox.ProbeTarget{API: d.cfg.API, Remote: d.cfg.RemoteAPI.Listen}
	var resp api.Response
	for _, b := range d.All() {
		p := b.(*insProc)
		pr := api.SandboxProbe{ID: p.id}
		b, _ := json.Marshal(ins.ManageRequest{Op: ins.ManageSandboxProbe, Probe: target})
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := p.ch.Call(cctx, ctrl.Frame{Kind: ctrl.KindManage}, b)
		cancel()
		if err != nil {
			pr.Error = err.Error()
		} else {
			r.CloseFiles()
			var rep ins.ProbeReply
			if err := json.Unmarshal(r.Payload, &rep); err != nil {
				pr.Error = fmt.Sprintf("probe reply: %v", err)
			}
			if rep.Error != "" {
				pr.Error = rep.Error
			}
			for _, x := range rep.Results {
				pr.Results = append(pr.Results, api.ProbeResult{Act: x.Act, Result: x.Result})
			}
		}
		resp.Probes = append(resp.Probes, pr)
	}
	resp.OK = true
	return resp
}

// cloexecInherited marks every descriptor this process inherited (3 and
// up) close-on-exec, so that nothing whoever started the daemon left open
// reaches an INS (or any other child). Descriptors Go opens are
// close-on-exec already; those a child must get are passed explicitly.
func cloexecInherited() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}
